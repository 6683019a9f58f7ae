"""``python -m eigen_apps.rollout_server --config X.yaml [key=value ...]``: a rollout server.

Runs scored episodes for a remote learner: the policy and (optionally) the user-simulator model
are OpenAI-compatible engines given by URL (vLLM, ``eigen_jax.serve``); tools and the verifier run
here. Stateless apart from the policy version the learner announces, so servers scale out
horizontally and a dead one costs only its in-flight episodes (``rollout.remote`` reruns them on
another server).

    POST /episode  {"task": Task, "seed": int, "group_id": str, "sample_index": int,
                    "temperature": float, "version": int,
                    "routes": RouteLayout (optional: an MoE policy's, under routing replay)}
                                                              -> Trajectory (reward filled in)
    POST /version  {"version": int}   the policy version the agent engine now serves
    GET  /health                      -> {"ok": true, "episodes": n, "in_flight": k, "version": v}
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from eigen_core import snapshots
from eigen_core.config import DomainConfig, EndpointSection, PoolConfig, ServerSection, env_secret
from eigen_core.configio import Section, add_config_args, config_from_args
from eigen_core.contracts import Task
from eigen_core.domains import get_domain
from eigen_core.routes import RouteLayout
from eigen_core.tokenizer import Tokenizer
from rollout import http_limits
from rollout.config import EpisodeConfig, episode_settings
from rollout.http_auth import server_token
from rollout.http_engine import EngineError, HTTPEngine
from rollout.version import PolicyVersion
from rollout.workflow import lm_episodes
from verifiers.config import VerifierConfig
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox


class RolloutServerConfig(Section):
    """A rollout server: which domain, how episodes run, who serves the agent and the user."""

    server: ServerSection = ServerSection(port=8100)
    """Where this server listens."""
    domain: DomainConfig = DomainConfig()
    """The tool domain its episodes run in."""
    episode: EpisodeConfig = EpisodeConfig()
    """How episodes run (the learner's run config should agree)."""
    verifier: VerifierConfig = VerifierConfig()
    """How episodes are scored."""
    agent: EndpointSection = EndpointSection(concurrency=64)
    """The policy's token-in/token-out engine (``tokenizer`` required)."""
    user: EndpointSection | None = None
    """The user-simulator model's engine (needed when ``episode.user: model``)."""
    pool: PoolConfig | None = None
    """The learner's task pool: the DB snapshots its tasks start from (tasks imported from the
    AReaL-SEA RL data) are read from there (``eigen_core.snapshots``). None: tasks that start from
    a snapshot are refused."""


def _engine(e: EndpointSection, version: PolicyVersion | None = None) -> HTTPEngine:
    return HTTPEngine(e.url, e.model, **e.client_options(), policy_version=version)


class RolloutServer:
    def __init__(self, cfg: RolloutServerConfig, sandbox: Sandbox):
        if cfg.episode.user == "model" and cfg.user is None:
            raise ValueError("episode.user is 'model': give the user-simulator engine in the 'user' section")
        for where, e in (("agent", cfg.agent), ("user", cfg.user)):
            if e is not None:
                e.require_kind(where, "endpoint")
        if not cfg.agent.tokenizer:
            raise ValueError("agent.tokenizer: the policy's tokenizer directory is required")
        self.cfg = cfg
        if cfg.pool is not None:
            snapshots.register(cfg.pool.dir)
        self.domain = get_domain(cfg.domain.name)
        self.verifier = Verifier(self.domain, sandbox, cfg.verifier.components)
        self.version = PolicyVersion()
        """What the policy engine serves, as the learner announces it (labels the tokens)."""
        self.agent = _engine(cfg.agent, self.version)
        self.user = _engine(cfg.user) if cfg.user is not None and cfg.episode.user == "model" else None
        self.tok = Tokenizer.from_dir(cfg.agent.tokenizer)
        self.user_tok = (
            Tokenizer.from_dir(cfg.user.tokenizer or cfg.agent.tokenizer) if self.user and cfg.user else None
        )
        self.episodes, self.in_flight = 0, 0

    def settings(self) -> dict[str, Any]:
        """What decides this server's episodes; a learner refuses servers that differ from it."""
        return episode_settings(self.cfg.domain.name, self.cfg.episode)

    async def episode(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            task = Task.model_validate(body["task"])
            seed, temperature = int(body["seed"]), float(body.get("temperature", 1.0))
            group_id, sample_index = str(body.get("group_id", "")), int(body.get("sample_index", 0))
            if not temperature > 0:
                raise ValueError(f"temperature must be > 0, not {temperature}")
            announced = int(body.get("version", 0))
            routes = None if body.get("routes") is None else RouteLayout.model_validate(body["routes"])
            if snapshots.is_snapshot(ref := task.initial_state.reference):
                snapshots.read(ref)
        except snapshots.SnapshotError as e:
            hint = "start the rollout server with pool.dir set to the learner's task pool"
            raise web.HTTPBadRequest(text=f"bad episode request: {e}; {hint}") from None
        except (KeyError, TypeError, ValueError, OverflowError, ValidationError) as e:
            raise web.HTTPBadRequest(text=f"bad episode request: {e}") from None
        self.version.raise_to(announced)
        runner = lm_episodes(
            self.domain,
            self.agent,
            self.tok,
            self.cfg.episode,
            self.verifier.score,
            temperature=temperature,
            user_engine=self.user,
            user_tok=self.user_tok,
            routes=routes,
        )
        self.in_flight += 1
        try:
            traj = await runner.run(task, seed, group_id, sample_index)
        finally:
            self.in_flight -= 1
        self.episodes += 1
        return traj.model_dump(mode="json")

    def app(self, api_key: str | None = None) -> web.Application:
        """The aiohttp application; with ``api_key``, every route but /health needs it."""

        async def episode(request: web.Request) -> web.Response:
            body = await _json_object(request)
            try:
                return web.json_response(await self.episode(body))
            except EngineError as e:
                if not e.transient:  # the engine refused the request: any server would hear the same
                    raise web.HTTPUnprocessableEntity(text=f"engine refused: {e}") from None
                # the policy / user engine kept failing: not this server's fault, another may fare better
                raise web.HTTPBadGateway(text=f"engine failed: {e}") from None

        async def version(request: web.Request) -> web.Response:
            body = await _json_object(request)
            try:
                self.version.set(int(body["version"]))  # labels the tokens of requests from now on
            except (KeyError, TypeError, ValueError) as e:
                raise web.HTTPBadRequest(text=f"bad version request: {e!r}") from None
            return web.json_response({"version": self.version.value})

        async def health(_: web.Request) -> web.Response:
            return web.json_response(
                {
                    "ok": True,
                    "episodes": self.episodes,
                    "in_flight": self.in_flight,
                    "version": self.version.value,
                    "settings": self.settings(),
                }
            )

        app = web.Application(
            client_max_size=64 * 2**20,
            middlewares=http_limits.middlewares(api_key, self.cfg.server),
        )
        app.add_routes(
            [web.post("/episode", episode), web.post("/version", version), web.get("/health", health)]
        )
        return app


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as e:  # JSON and UTF-8 errors alike
        raise web.HTTPBadRequest(text=f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def _progress(server: RolloutServer, every_s: float) -> None:
    last, t_last = 0, time.perf_counter()
    while True:
        await asyncio.sleep(every_s)
        now = time.perf_counter()
        if server.episodes != last:
            rate = (server.episodes - last) / (now - t_last)
            print(
                f"[rollout] {server.episodes} episodes ({rate:.2f}/s), {server.in_flight} in flight, "
                f"policy v{server.agent.version}, {server.agent.retries} retries",
                flush=True,
            )
        last, t_last = server.episodes, now


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m eigen_apps.rollout_server", description=__doc__.split("\n\n")[0]
    )
    add_config_args(ap)
    cfg = config_from_args(RolloutServerConfig, ap.parse_args(argv), foreign_sections=())
    s = cfg.server
    try:
        api_key = server_token(s.host, env_secret(s.api_key_env, "server.api_key_env"), "server.api_key_env")
    except ValueError as e:
        sys.exit(f"eigen_apps.rollout_server: {e}")
    with Sandbox.from_config(cfg.verifier) as sb:
        try:
            server = RolloutServer(cfg, sb)
        except ValueError as e:
            sys.exit(f"eigen_apps.rollout_server: {e}")

        async def start(app: web.Application) -> None:
            app["progress"] = asyncio.create_task(_progress(server, cfg.server.progress_every))

        async def stop(app: web.Application) -> None:
            await server.agent.close()
            if server.user is not None:
                await server.user.close()

        app = server.app(api_key)
        app.on_startup.append(start)
        app.on_cleanup.append(stop)
        auth = ", API key required" if api_key else ""
        print(
            f"[rollout] {cfg.domain.name} episodes on http://{s.host}:{s.port}, agent {cfg.agent.url}{auth}",
            flush=True,
        )
        http_limits.run(app, s)


if __name__ == "__main__":
    main()
