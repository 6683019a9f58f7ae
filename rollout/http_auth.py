"""Bearer-token access for our HTTP servers (``eigen_jax.serve``, ``eigen_apps.rollout_server``).

Both bind 127.0.0.1 by default. Bound to any other address they serve the network, so they
refuse to start without a token; with one, every route but ``/health`` needs
``Authorization: Bearer <token>`` (what ``HTTPEngine(api_key=...)`` and the rollout client send).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

API_KEY_ENV = "EIGEN_API_KEY"
"""The environment variable both servers read their token from when none is given."""
OPEN_PATHS = frozenset({"/health"})
"""Routes answered to anyone, always: no token, no in-flight cap (``http_limits``)."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def server_token(host: str, token: str | None, where: str) -> str | None:
    """The token a server on ``host`` requires (``token``, else ``$EIGEN_API_KEY``), or None on
    loopback without one. ``where`` names the setting in the error a non-loopback server without
    a token raises."""
    token = token or os.environ.get(API_KEY_ENV) or None
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without an API key: anyone who reaches it could use it. "
            f"Set {where} (or the {API_KEY_ENV} environment variable), or bind 127.0.0.1"
        )
    return token


def bearer_auth(token: str, open_paths: frozenset[str] = OPEN_PATHS) -> Callable:
    """aiohttp middleware: 401 for a request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.path not in open_paths:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {
                        "error": {
                            "message": "missing or wrong API key (Authorization: Bearer ...)",
                            "type": "AuthenticationError",
                        }
                    },
                    status=401,
                )
        return await handler(request)

    return check
