"""A fault-injecting HTTP proxy, for testing every client against an unreliable network and server.

    python -m rollout.fault_proxy --upstream http://127.0.0.1:8000 --port 8010 --rate 0.2 [--seed 0]
    python -m rollout.fault_proxy --config X.yaml  (section ``proxy``; the flags are its aliases)

Forwards every request to ``upstream``; a seeded share ``rate`` of them instead meets one fault,
drawn uniformly from ``faults``:

- ``reset``: the connection is closed without an answer;
- ``error500``: ``500`` with a JSON error;
- ``rate_limited``: ``429`` with ``Retry-After``;
- ``hang``: no answer for ``hang_s`` (past the client's timeout), then the connection closes;
- ``slow``: the real answer, dribbled out in small pieces over ~``slow_s`` (a success, slowly);
- ``truncated``: the real answer's headers and half its body, then the connection closes;
- ``malformed``: ``200`` with a body that is not JSON;
- ``wrong_model``: the real answer with its ``model`` field naming another model.

``counts`` says how many requests met each fault (and ``ok``: forwarded untouched); the proxy
itself answers ``GET /_fault_proxy/counts`` with them. ``abandoned`` counts forwarded answers
whose client was already gone (it timed out on a slow upstream: a retry the proxy did not
cause). Binds 127.0.0.1 only: it is a test tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from collections import Counter
from collections.abc import Sequence

import aiohttp
from aiohttp import web
from pydantic import Field, field_validator

from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args

FAULTS = ("reset", "error500", "rate_limited", "hang", "slow", "truncated", "malformed", "wrong_model")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class FaultProxy:
    """The proxy as an aiohttp application (``app()``) around one upstream base URL."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.2,
        *,
        seed: int = 0,
        faults: Sequence[str] = FAULTS,
        hang_s: float = 30.0,
        slow_s: float = 0.5,
        retry_after_s: float = 0.1,
    ):
        unknown = set(faults) - set(FAULTS)
        if unknown or not faults:
            raise ValueError(f"faults must be a non-empty subset of {FAULTS}, not {sorted(unknown)}")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], not {rate}")
        self.upstream = upstream.rstrip("/")
        self.rate, self.faults = rate, tuple(faults)
        self.hang_s, self.slow_s, self.retry_after_s = hang_s, slow_s, retry_after_s
        self.counts: Counter[str] = Counter()
        self.abandoned = 0
        self._rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None

    def _draw(self) -> str:
        return self._rng.choice(self.faults) if self._rng.random() < self.rate else "ok"

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as resp:  # fmt: skip
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return resp.status, out, await resp.read()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._draw()
        self.counts[fault] += 1
        if fault == "reset":
            request.transport.close()
            return web.Response(status=500)  # never reaches the client: the socket is gone
        if fault == "error500":
            return web.json_response({"error": {"message": "injected fault"}}, status=500)
        if fault == "rate_limited":
            return web.json_response(
                {"error": {"message": "injected rate limit"}}, status=429,
                headers={"Retry-After": f"{self.retry_after_s:g}"},
            )  # fmt: skip
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            request.transport.close()
            return web.Response(status=504)
        if fault == "malformed":
            return web.Response(
                status=200, body=b'{"choices": [{"text": "unterminated', content_type="application/json"
            )
        try:
            status, headers, data = await self._forward(request, body)
        except asyncio.CancelledError:  # the client hung up (a server with handler cancellation)
            self.abandoned += 1
            raise
        if request.transport is None or request.transport.is_closing():
            self.abandoned += 1  # no fault of ours: the client gave up waiting upstream
        if fault == "wrong_model" and status == 200:
            try:
                obj = json.loads(data)
                if isinstance(obj, dict) and "model" in obj:
                    obj["model"] = f"not-{obj['model']}"
                    data = json.dumps(obj).encode()
            except ValueError:
                pass
        if fault in ("slow", "truncated"):
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(data)
            await resp.prepare(request)
            if fault == "truncated":
                await resp.write(data[: len(data) // 2])
                request.transport.close()
                return resp
            pieces = max(1, min(len(data), 10))
            step = -(-len(data) // pieces)
            for i in range(0, len(data), step):
                await resp.write(data[i : i + step])
                await asyncio.sleep(self.slow_s / pieces)
            await resp.write_eof()
            return resp
        return web.Response(status=status, headers=headers, body=data)

    def app(self) -> web.Application:
        async def close(_: web.Application) -> None:
            if self._session is not None:
                await self._session.close()

        async def counts(_: web.Request) -> web.Response:
            return web.json_response(dict(self.counts))

        app = web.Application(client_max_size=256 * 2**20)
        app.router.add_get("/_fault_proxy/counts", counts)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(close)
        return app


class ProxySection(Section):
    upstream: str = "http://127.0.0.1:8000"
    """Base URL every request is forwarded to."""
    port: int = Field(8010, ge=1, le=65535)
    """Port the proxy listens on (127.0.0.1 only)."""
    rate: float = Field(0.2, ge=0, le=1)
    """Share of requests that meet a fault."""
    seed: int = 0
    """Seeds which requests meet which fault."""
    faults: list[str] = Field(default_factory=lambda: list(FAULTS))
    """The faults drawn from (a subset of ``FAULTS``; on the command line comma-separated)."""
    hang_s: float = Field(30.0, gt=0)
    """How long a hung request waits before its connection closes."""
    retry_after_s: float = Field(0.1, ge=0)
    """``Retry-After`` of injected 429s."""

    @field_validator("faults", mode="before")
    @classmethod
    def _known(cls, v: object) -> object:
        names = v.split(",") if isinstance(v, str) else v
        unknown = [f for f in names if f not in FAULTS] if isinstance(names, list) else []
        if unknown:
            raise ValueError(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
        return names


class ProxyConfig(Section):
    """The sections ``rollout.fault_proxy`` reads."""

    proxy: ProxySection = ProxySection()
    """Upstream, port, fault rate and kinds."""


FLAGS = {
    "--upstream": ("proxy.upstream", str),
    "--port": ("proxy.port", int),
    "--rate": ("proxy.rate", float),
    "--seed": ("proxy.seed", int),
    "--faults": ("proxy.faults", str),
    "--hang-s": ("proxy.hang_s", float),
    "--retry-after-s": ("proxy.retry_after_s", float),
}
"""Flags that are aliases of config keys."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rollout.fault_proxy", description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    add_flag_aliases(ap, FLAGS)
    args = ap.parse_args(argv)
    p = config_from_args(ProxyConfig, args, alias_overrides(args, FLAGS)).proxy
    proxy = FaultProxy(
        p.upstream, p.rate, seed=p.seed, faults=p.faults, hang_s=p.hang_s, retry_after_s=p.retry_after_s
    )
    print(f"[fault_proxy] 127.0.0.1:{p.port} -> {p.upstream}, {p.rate:.0%} faults", flush=True)
    web.run_app(proxy.app(), host="127.0.0.1", port=p.port, print=None)


if __name__ == "__main__":
    main()
