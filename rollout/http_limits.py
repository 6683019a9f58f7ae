"""Deadlines for what a client sends our HTTP servers (``eigen_jax.serve``,
``eigen_apps.rollout_server``), so a slow or stalled client ("slowloris") holds a connection
for seconds, not forever.

Three limits, all from ``eigen_core.config.ServerSection``:

- ``idle_timeout_s``: a connection without a complete request's headers (idle between requests,
  or dribbling its headers) is closed. aiohttp's keep-alive timer does this; its default when
  the application is run by hand is an hour.
- ``read_timeout_s``: once the headers are in, the body must arrive within this many seconds,
  or the answer is 408 and the connection is closed (aiohttp waits for a body forever).

- ``max_inflight``: requests being read or handled at once (``/health`` aside); one more is
  answered 429 with ``Retry-After`` (our clients retry it), so a flood waits at the clients,
  not in this server's memory. Connections that have not sent a request yet are bounded by the
  idle deadline instead.

How long a handler takes to answer (an episode may run for minutes) is not limited here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from eigen_core.config import ServerSection
from rollout.http_auth import OPEN_PATHS, bearer_auth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_deadline(timeout_s: float) -> Callable:
    """aiohttp middleware: read the whole body within ``timeout_s`` seconds (the handler then
    reads it from memory), else answer 408 and close the connection."""

    @web.middleware
    async def read_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), timeout_s)
            except TimeoutError:
                message = f"the request body did not arrive within {timeout_s:g} s (server.read_timeout_s)"
                resp = web.json_response(
                    {"error": {"message": message, "type": "RequestTimeout"}}, status=408
                )
                resp.force_close()  # what is left of the body is never read
                return resp
        return await handler(request)

    return read_in_time


def inflight_cap(limit: int, open_paths: frozenset[str] = OPEN_PATHS) -> Callable:
    """aiohttp middleware: at most ``limit`` requests in the handlers at once; beyond, 429."""
    state = {"n": 0}

    @web.middleware
    async def cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:  # a health check must answer even when the server is full
            return await handler(request)
        if state["n"] >= limit:
            message = f"{limit} requests are in flight (server.max_inflight); retry shortly"
            return web.json_response(
                {"error": {"message": message, "type": "RateLimitError"}}, status=429,
                headers={"Retry-After": "1"},
            )  # fmt: skip
        state["n"] += 1
        try:
            return await handler(request)
        finally:
            state["n"] -= 1

    return cap


def middlewares(api_key: str | None, server: ServerSection) -> list[Callable]:
    """Both servers' middlewares: the token check first (a request without one is answered
    before it takes a slot or its body is waited for), then the in-flight cap, then the body
    deadline."""
    auth = [bearer_auth(api_key)] if api_key else []
    return [*auth, inflight_cap(server.max_inflight), body_deadline(server.read_timeout_s)]


def runner_options(server: ServerSection) -> dict[str, Any]:
    """Keyword arguments for ``web.run_app`` / ``web.AppRunner``: the idle deadline."""
    return {"keepalive_timeout": server.idle_timeout_s}


def run(app: web.Application, server: ServerSection) -> None:
    """Serve ``app`` on ``server.host:server.port`` until interrupted, with its deadlines."""
    web.run_app(app, host=server.host, port=server.port, print=None, **runner_options(server))
