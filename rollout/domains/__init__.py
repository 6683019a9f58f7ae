"""Domain registry: ``get_domain(name)`` returns a ``Domain``; tau² domains register later."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from rollout.domain import Domain

_FACTORIES: dict[str, Callable[[], Domain]] = {}


def register_domain(name: str, factory: Callable[[], Domain]) -> None:
    _FACTORIES[name] = factory


def _shop() -> Domain:
    from rollout.domains.shop import ShopDomain

    return ShopDomain()


register_domain("shop", _shop)


def available_domains() -> list[str]:
    return sorted(_FACTORIES)


@cache
def get_domain(name: str) -> Domain:
    """The (shared, stateless) domain registered as ``name``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; available: {', '.join(available_domains())}") from None
    return factory()
