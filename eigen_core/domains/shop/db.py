"""The ShopCo database: customers, their orders, and the product catalogue."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

OrderStatus = Literal["pending", "shipped", "delivered", "cancelled", "returned"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Product(_Record):
    product_id: str
    name: str
    price_cents: int


class Order(_Record):
    order_id: str
    customer_id: str
    product_ids: list[str]
    status: OrderStatus
    refund_cents: int = 0


class Customer(_Record):
    customer_id: str
    name: str
    email: str
    order_ids: list[str]


class ShopDB(_Record):
    customers: dict[str, Customer]
    orders: dict[str, Order]
    products: dict[str, Product]

    def order_total_cents(self, order: Order) -> int:
        return sum(self.products[p].price_cents for p in order.product_ids)


def format_cents(cents: int) -> str:
    """Money as the tools print it and as required outputs expect it: ``"12.50"``."""
    return f"{cents // 100}.{cents % 100:02d}"
