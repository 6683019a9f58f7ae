"""ShopCo's tools. Tools enforce data integrity only; the policy is the agent's job (as in tau²),
so an agent that breaks a rule changes the DB and fails the task."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eigen_core.domain import Tool, ToolError
from eigen_core.domains.shop.db import ShopDB, format_cents


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CustomerArgs(_Args):
    customer_id: str = Field(description="The customer's id, e.g. 'C1234'.")


class OrderArgs(_Args):
    order_id: str = Field(description="The order id, e.g. 'O12345'.")


class TransferArgs(_Args):
    summary: str = Field(description="A one-line summary of the customer's issue.")


def _order(db: ShopDB, order_id: str):
    order = db.orders.get(order_id)
    if order is None:
        raise ToolError(f"order '{order_id}' not found")
    return order


def get_customer(db: ShopDB, args: CustomerArgs) -> dict[str, Any]:
    c = db.customers.get(args.customer_id)
    if c is None:
        raise ToolError(f"customer '{args.customer_id}' not found")
    return {"customer_id": c.customer_id, "name": c.name, "order_ids": c.order_ids}


def get_order(db: ShopDB, args: OrderArgs) -> dict[str, Any]:
    o = _order(db, args.order_id)
    items = [
        {"name": db.products[p].name, "price": format_cents(db.products[p].price_cents)}
        for p in o.product_ids
    ]
    return {
        "order_id": o.order_id,
        "customer_id": o.customer_id,
        "status": o.status,
        "items": items,
        "total": format_cents(db.order_total_cents(o)),
    }


def _close_with_refund(db: ShopDB, order_id: str, status: str) -> dict[str, Any]:
    # Checks happen before any mutation: a refused call leaves the DB untouched.
    o = _order(db, order_id)
    if o.status in ("cancelled", "returned"):
        raise ToolError(f"order '{o.order_id}' is already {o.status}")
    o.refund_cents = db.order_total_cents(o)
    o.status = status
    return {"order_id": o.order_id, "status": o.status, "refund": format_cents(o.refund_cents)}


def cancel_order(db: ShopDB, args: OrderArgs) -> dict[str, Any]:
    return _close_with_refund(db, args.order_id, "cancelled")


def return_order(db: ShopDB, args: OrderArgs) -> dict[str, Any]:
    return _close_with_refund(db, args.order_id, "returned")


def transfer_to_human(db: ShopDB, args: TransferArgs) -> str:
    return "Transfer successful. A human agent will take over."


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool("get_customer", "Look up a customer and the ids of their orders.", CustomerArgs, get_customer),
        Tool("get_order", "Look up an order: owner, status, items and total.", OrderArgs, get_order),
        Tool("cancel_order", "Cancel an order and refund its total.", OrderArgs, cancel_order, writes=True),
        Tool("return_order", "Return an order and refund its total.", OrderArgs, return_order, writes=True),
        Tool(
            "transfer_to_human",
            "Hand the conversation to a human agent. Ends the conversation.",
            TransferArgs,
            transfer_to_human,
            terminal=True,
        ),
    ]
}
