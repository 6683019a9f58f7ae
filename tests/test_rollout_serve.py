"""Rollout servers: the server's episodes equal in-process ones, the client fails over, and GRPO
runs through launched servers (policy on ``eigen_jax.serve``) while one of them is killed."""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from rollout_topology import pool_and_agent, topology

from eigen_apps.rollout_server import RolloutServer, RolloutServerConfig
from eigen_core.configio import load_config
from eigen_core.contracts import Termination, Trajectory
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.config import RunConfig
from eigen_jax.train import run
from rollout.http_engine import EngineError
from rollout.remote import RemoteEpisodes, SettingsMismatch
from rollout.vllm_server import free_port
from verifiers.sandbox import Sandbox

ROOT = Path(__file__).parents[1]


def _fake_server(answer, settings=lambda: None):
    """A rollout server whose episodes are ``answer(body)`` and whose /health names
    ``settings()``."""

    async def episode(request):
        return await answer(await request.json())

    async def version(request):
        return web.json_response({})

    async def health(request):
        return web.json_response({"ok": True, "settings": settings()})

    app = web.Application()
    app.add_routes([web.post("/episode", episode), web.post("/version", version), web.get("/health", health)])
    return app


def _traj_json(body, tag):
    t = Trajectory(task_id=body["task"]["id"], messages=[], termination=Termination.USER_STOP, error=tag)
    return web.json_response(t.model_dump(mode="json"))


def test_client_reruns_an_episode_elsewhere_when_a_server_fails(shop_tasks):
    calls = {"bad": 0, "good": 0}

    async def bad(body):
        calls["bad"] += 1
        return web.Response(status=503, text="dying")

    async def good(body):
        calls["good"] += 1
        return _traj_json(body, "good")

    async def main():
        servers = [TestServer(_fake_server(bad)), TestServer(_fake_server(good))]
        for s in servers:
            await s.start_server()
        urls = [str(s.make_url("")).rstrip("/") for s in servers]
        remote = RemoteEpisodes(urls, cooldown_s=60)
        try:
            trajs = await asyncio.gather(*(remote.run(t, 0) for t in shop_tasks[:6]))
            return trajs, remote.failures[urls[0]]
        finally:
            await remote.close()
            for s in servers:
                await s.close()

    trajs, failures = asyncio.run(main())
    assert [t.error for t in trajs] == ["good"] * 6
    # the failing server was tried (it had no episodes in flight), then set aside
    assert failures >= 1 and calls["bad"] == failures and calls["good"] == 6


def test_a_server_that_failed_rejoins_only_after_its_health_check(shop_tasks):
    """A server that failed is checked again (``/health`` and its episode settings) before it
    gets another episode: back healthy it serves again; restarted with other settings it is
    refused by name."""
    ours = {"domain": "shop", "episode": {"max_steps": 10}}
    state = {"down": True, "settings": ours, "episodes": 0, "health": 0}

    async def answer(body):
        if state["down"]:
            return web.Response(status=503, text="restarting")
        state["episodes"] += 1
        return _traj_json(body, "back")

    def settings():
        state["health"] += 1
        return state["settings"]

    async def main():
        server = TestServer(_fake_server(answer, settings))
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        remote = RemoteEpisodes([url], cooldown_s=0.05, max_attempts=1, settings=ours)
        try:
            with pytest.raises(EngineError):
                await remote.run(shop_tasks[0], 0)
            checks = state["health"]
            state["down"] = False
            await asyncio.sleep(0.06)
            assert (await remote.run(shop_tasks[0], 0)).error == "back"
            assert state["health"] == checks + 1  # checked again before the episode
            await remote.run(shop_tasks[1], 0)
            assert state["health"] == checks + 1  # not before every episode
            state["down"] = True
            with pytest.raises(EngineError):
                await remote.run(shop_tasks[0], 0)
            state["down"], state["settings"] = False, {"domain": "shop", "episode": {"max_steps": 20}}
            await asyncio.sleep(0.06)
            with pytest.raises(SettingsMismatch, match=r"episode\.max_steps \(learner 10, server 20\)"):
                await remote.run(shop_tasks[0], 0)
            assert state["episodes"] == 2
        finally:
            await remote.close()
            await server.close()

    asyncio.run(main())


def test_client_gives_up_when_no_server_answers(shop_tasks):
    remote = RemoteEpisodes([f"http://127.0.0.1:{free_port()}"], cooldown_s=0.01, max_attempts=2)

    async def go():
        try:
            with pytest.raises(EngineError, match="failed on every attempt"):
                await remote.run(shop_tasks[0], 0)
        finally:
            await remote.close()

    asyncio.run(go())


def test_bad_episode_request_is_a_400(shop_tasks, tmp_path):
    tok = build_small_tokenizer(["hello world"], 300)
    tok.save(tmp_path / "tok")
    cfg = RolloutServerConfig.model_validate(
        {"agent": {"tokenizer": str(tmp_path / "tok")}, "episode": {"user": "scripted"}}
    )

    async def main():
        with Sandbox(1, 2.0, 256) as sb:
            server = TestServer(RolloutServer(cfg, sb).app())
            await server.start_server()
            try:
                remote = RemoteEpisodes([str(server.make_url("")).rstrip("/")])
                broken = shop_tasks[0].model_copy(update={"scenario": None})  # skips validation
                with pytest.raises(EngineError, match="HTTP 400"):
                    await remote.run(broken, 0)
                await remote.close()
            finally:
                await server.close()

    asyncio.run(main())


def test_an_engine_that_refuses_the_request_stops_the_client_at_once(shop_tasks, tmp_path):
    """A policy engine without routed experts, asked for them (routing replay): the rollout
    server answers 422 naming the cause, and the client stops there, not after retrying every
    server (every one of them would hear the same refusal)."""
    from eigen_core.routes import RouteLayout

    tok = build_small_tokenizer(["hello world"], 300)
    tok.save(tmp_path / "tok")
    completions = {"n": 0}

    async def complete(request):  # a vLLM answer without ``routed_experts``
        completions["n"] += 1
        body = await request.json()
        choice = {"token_ids": [tok.eos_id], "logprobs": {"token_logprobs": [-0.1]}, "finish_reason": "stop"}
        return web.json_response({"model": body["model"], "choices": [choice]})

    engine = web.Application()
    engine.add_routes([web.post("/v1/completions", complete)])

    async def main():
        with Sandbox(1, 2.0, 256) as sb:
            policy = TestServer(engine)
            await policy.start_server()
            url = str(policy.make_url("")).rstrip("/")
            cfg = RolloutServerConfig.model_validate(
                {"agent": {"url": url, "model": "m", "tokenizer": str(tmp_path / "tok"), "max_retries": 0},
                 "episode": {"user": "scripted"}}
            )  # fmt: skip
            servers = [TestServer(RolloutServer(cfg, sb).app()) for _ in range(2)]
            for s in servers:
                await s.start_server()
            try:
                urls = [str(s.make_url("")).rstrip("/") for s in servers]
                layout = RouteLayout(moe_layers=(0, 1), num_experts=4, k=2)
                remote = RemoteEpisodes(urls, routes=layout, cooldown_s=0.01)
                with pytest.raises(EngineError, match=r"HTTP 422.*no routed_experts") as e:
                    await remote.run(shop_tasks[0], 0)
                assert not e.value.transient  # rerun_on_engine_error does not rerun it either
                assert completions["n"] == 1 and sum(remote.failures.values()) == 0
                await remote.close()
            finally:
                for s in servers:
                    await s.close()
                await policy.close()

    asyncio.run(main())


@pytest.mark.slow
def test_grpo_through_rollout_servers_survives_a_killed_server(tmp_path):
    """Also through 20% injected faults of every kind in front of the policy engine (episodes and
    weight sync) and of each rollout server (rollout.fault_proxy)."""
    pool_and_agent(tmp_path)
    with topology(tmp_path) as (procs, ports):
        fe, f1, f2, p1 = ports["fe"], ports["f1"], ports["f2"], ports["r1"]
        cfg = load_config(
            RunConfig,
            ROOT / "configs/quickstart.yaml",
            [
                f"run.out_dir={tmp_path}/run",
                f"pool.dir={tmp_path}/run/pool",
                "run.progress=false",
                "run.stages=[grpo]",
                f"model.hf_dir={tmp_path / 'agent'}",
                f"model.tokenizer={tmp_path / 'tok'}",
                "episode.user=scripted",  # the rollout servers' episode settings (checked)
                "episode.turn_tokens=16",
                "episode.max_steps=3",
                "episode.prompt=full",
                "grpo.steps=4",
                "grpo.tasks_per_step=2",
                "grpo.group_size=4",
                "grpo.filter_groups=false",
                "grpo.episodes.deterministic=false",  # remote engines batch by arrival: no lockstep
                "grpo.heldout.every=null",
                f"grpo.remote.servers=[http://127.0.0.1:{f1},http://127.0.0.1:{f2}]",
                f"grpo.remote.agent.url=http://127.0.0.1:{fe}",
                "grpo.remote.agent.model=agent",
            ],
        )
        metrics = tmp_path / "run/grpo/metrics.jsonl"

        def killer():  # kill r2 once the first update landed: its in-flight episodes rerun on r1
            deadline = time.time() + 300
            while time.time() < deadline:
                if metrics.exists() and metrics.read_text().strip():
                    procs["r2"].send_signal(signal.SIGKILL)
                    return
                time.sleep(0.05)

        import threading

        th = threading.Thread(target=killer)
        th.start()
        summary = run(cfg)["grpo"]
        th.join()
        assert procs["r2"].poll() == -signal.SIGKILL
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4
        import urllib.request

        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{p1}/health").read())
        assert health["episodes"] > 0 and health["version"] == 4  # versions announced per sync
        injected = {
            name: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/_fault_proxy/counts").read())
            for name, port in (("fe", fe), ("f1", f1))
        }
        assert all(sum(n for f, n in c.items() if f not in ("ok", "slow")) > 0 for c in injected.values())
        assert rows[-1]["request_retries_total"] > 0
        served = sorted(p.name for p in (tmp_path / "run/grpo/served_weights").iterdir())
        assert served == ["v3", "v4"]
    assert os.path.exists(tmp_path / "r1.log")


def test_a_learner_refuses_a_server_with_other_episode_settings(shop_tasks, tmp_path):
    """At first contact the client compares the server's domain and episode settings with the
    learner's, and refuses naming every key that differs (speed-only keys may differ)."""
    from rollout.config import EpisodeConfig, episode_settings

    tok = build_small_tokenizer(["hello world"], 300)
    tok.save(tmp_path / "tok")
    server_ep = {"user": "scripted", "max_steps": 20, "prompt": "brief", "concurrency": 4}
    cfg = RolloutServerConfig.model_validate(
        {"agent": {"tokenizer": str(tmp_path / "tok")}, "episode": server_ep}
    )
    learner = EpisodeConfig(user="scripted", max_steps=10, prompt="full", concurrency=64)

    async def main():
        with Sandbox(1, 2.0, 256) as sb:
            server = TestServer(RolloutServer(cfg, sb).app())
            await server.start_server()
            url = str(server.make_url("")).rstrip("/")
            try:
                mine = episode_settings("shop", learner)
                remote = RemoteEpisodes([url], settings=mine, max_attempts=1)
                with pytest.raises(SettingsMismatch) as e:
                    await remote.run(shop_tasks[0], 0)
                assert "episode.max_steps (learner 10, server 20)" in str(e.value)
                assert "episode.prompt (learner 'full', server 'brief')" in str(e.value)
                assert "concurrency" not in str(e.value) and remote.failures[url] == 0
                await remote.close()
                agree = episode_settings("shop", cfg.episode)
                remote = RemoteEpisodes([url], settings=agree, max_attempts=1)
                await remote._check(url)  # the same settings pass
                await remote.close()
            finally:
                await server.close()

    asyncio.run(main())


def test_a_task_on_a_db_snapshot_needs_the_pool_that_holds_it(shop_tasks, tmp_path):
    """The server resolves snapshot references through ``pool.dir``; without it, such a task is
    a 400 that says so (never an episode on the wrong DB)."""
    from eigen_core import snapshots
    from eigen_core.storage import open_store

    tok = build_small_tokenizer(["hello world"], 300)
    tok.save(tmp_path / "tok")
    ref = snapshots.put(open_store(tmp_path / "pool"), b'{"stored": "once"}', "json")
    snapshots._stores.clear()  # as in a fresh server process
    snapshots._read.cache_clear()
    base = {"agent": {"tokenizer": str(tmp_path / "tok")}, "episode": {"user": "scripted"}}
    task = shop_tasks[0].model_copy(
        update={"initial_state": shop_tasks[0].initial_state.model_copy(update={"reference": ref})}
    )

    async def main():
        with Sandbox(1, 2.0, 256) as sb:
            server = TestServer(RolloutServer(RolloutServerConfig.model_validate(base), sb).app())
            await server.start_server()
            try:
                remote = RemoteEpisodes([str(server.make_url("")).rstrip("/")])
                with pytest.raises(EngineError, match=r"HTTP 400.*pool\.dir set to the learner's task pool"):
                    await remote.run(task, 0)
                await remote.close()
            finally:
                await server.close()

    asyncio.run(main())
    with Sandbox(1, 2.0, 256) as sb:
        RolloutServer(
            RolloutServerConfig.model_validate({**base, "pool": {"dir": str(tmp_path / "pool")}}), sb
        )
    assert snapshots.parse(ref) == {"stored": "once"}
