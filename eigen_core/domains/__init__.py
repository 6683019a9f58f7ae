"""Domain registry: ``get_domain(name)`` returns a ``Domain``: the built-in ``shop``, and tau²-bench's
``airline``, ``retail`` and ``telecom`` (with the ``tau2`` extra installed)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from eigen_core.domain import Domain

_FACTORIES: dict[str, Callable[[], Domain]] = {}


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


def register_domain(name: str, factory: Callable[[], Domain]) -> None:
    """Make ``get_domain(name)`` build its domain with ``factory`` (called once, then cached)."""
    _FACTORIES[name] = factory
    get_domain.cache_clear()


def _shop() -> Domain:
    from eigen_core.domains.shop import ShopDomain

    return ShopDomain()


register_domain("shop", _shop)


def _tau2(name: str) -> Callable[[], Domain]:
    def factory() -> Domain:
        from eigen_core.domains.tau2 import tau2_domain

        return tau2_domain(name)

    return factory


for _name in ("airline", "retail", "telecom"):
    register_domain(_name, _tau2(_name))
