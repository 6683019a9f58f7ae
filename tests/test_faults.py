"""Every client against ``rollout.fault_proxy`` at 20-30% faults of every kind (reset, 500, 429
with Retry-After, hang, slow, truncated, malformed JSON, wrong model): the work completes with the
same answers, the retries are counted, and an endpoint past its failure budget stops the run with
an error naming it."""

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from http_helpers import SeededSampler

from eigen_core.contracts import Termination, Trajectory
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.serve import Server
from rollout.engine import SamplingParams
from rollout.fault_proxy import FAULTS, FaultProxy
from rollout.http_engine import EngineError, FailureBudgetExceeded, HTTPEngine, rerun_on_engine_error
from rollout.remote import RemoteEpisodes

ROOT = Path(__file__).parents[1]


async def _stack(upstream_app, **proxy_kw):
    up = TestServer(upstream_app)
    await up.start_server()
    proxy = FaultProxy(str(up.make_url("")).rstrip("/"), **proxy_kw)
    front = TestServer(proxy.app())
    await front.start_server()
    return up, front, proxy


def test_the_client_recovers_from_every_fault_with_the_same_answers():
    tok = build_small_tokenizer(["a b c d e"], 260)

    async def main():
        up, front, proxy = await _stack(
            Server(SeededSampler(), tok, "m").app(),
            rate=0.3,
            seed=1,
            hang_s=1.5,
            slow_s=0.2,
            retry_after_s=0.01,
        )
        try:
            direct = HTTPEngine(str(up.make_url("")).rstrip("/"), "m")
            flaky = HTTPEngine(
                str(front.make_url("")).rstrip("/"), "m", timeout_s=0.8, max_retries=8, backoff_s=0.01,
                max_backoff_s=0.05, concurrency=8,
            )  # fmt: skip
            prompts = [[5 + i % 17, 9, i] for i in range(160)]
            sp = [SamplingParams(max_new_tokens=4, seed=i) for i in range(160)]
            want = await asyncio.gather(*(direct.generate(p, s) for p, s in zip(prompts, sp, strict=True)))
            got = await asyncio.gather(*(flaky.generate(p, s) for p, s in zip(prompts, sp, strict=True)))
            await direct.close()
            await flaky.close()
            return want, got, proxy.counts, flaky.retries, proxy.abandoned
        finally:
            await front.close()
            await up.close()

    want, got, counts, retries, abandoned = asyncio.run(main())
    assert [g.tokens for g in got] == [w.tokens for w in want]
    assert [g.logprobs for g in got] == [w.logprobs for w in want]
    assert set(FAULTS) <= set(counts), counts  # every kind of fault was met
    failed = sum(n for f, n in counts.items() if f not in ("ok", "slow"))
    # each failed attempt was retried exactly once (and a sound answer that came too late, once)
    assert retries == failed + abandoned, (retries, counts, abandoned)


@pytest.mark.parametrize("cancel", [True, False], ids=["handler-cancelled", "handler-runs-on"])
def test_the_proxy_counts_sound_answers_whose_client_gave_up(cancel):
    """A slow upstream (no injected fault) outlasting the client's timeout: the proxy counts the
    answer it could not deliver, so tests can tell such retries from the ones it caused (aiohttp
    cancels the handler of a vanished client under a test server, not under ``run_app``)."""

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.json_response({"ok": True})

    async def main():
        app = web.Application()
        app.router.add_post("/x", slow)
        up = TestServer(app)
        await up.start_server()
        proxy = FaultProxy(str(up.make_url("")).rstrip("/"), rate=0.0)
        runner = web.AppRunner(proxy.app(), handler_cancellation=cancel)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            eng = HTTPEngine(f"http://127.0.0.1:{port}", "m", timeout_s=0.2, max_retries=0)
            with pytest.raises(EngineError):
                await eng.request("POST", "/x", {})
            await eng.close()
            await asyncio.sleep(0.8)  # the upstream answers, to nobody
            return proxy.counts, proxy.abandoned
        finally:
            await runner.cleanup()
            await up.close()

    assert asyncio.run(main()) == ({"ok": 1}, 1)


def test_past_its_failure_budget_an_endpoint_stops_the_run_by_name():
    tok = build_small_tokenizer(["a b c"], 260)

    async def main():
        up, front, proxy = await _stack(
            Server(SeededSampler(), tok, "m").app(), rate=1.0, faults=["error500"]
        )
        url = str(front.make_url("")).rstrip("/")
        try:
            eng = HTTPEngine(url, "m", max_retries=1000, backoff_s=0.001, max_backoff_s=0.001)
            with pytest.raises(FailureBudgetExceeded) as e:
                await eng.generate([1, 2], SamplingParams(max_new_tokens=2))
            await eng.close()
            return str(e.value), url, proxy.counts["error500"]
        finally:
            await front.close()
            await up.close()

    msg, url, attempts = asyncio.run(main())
    assert url in msg and "failure budget of 50%" in msg and "HTTP 500" in msg
    assert attempts == 20  # judged after the first 20 attempts, not after 1000 retries


def test_reruns_are_for_transient_engine_failures_only():
    calls, heard = [], []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise EngineError("down", transient=True)
        return "ok"

    assert asyncio.run(rerun_on_engine_error(flaky, 3, heard.append)) == "ok" and heard == ["down", "down"]

    async def wrong():
        raise EngineError("HTTP 400: bad request")

    async def spent():
        raise FailureBudgetExceeded("too many", transient=True)

    for fn in (wrong, spent):
        with pytest.raises(EngineError):
            asyncio.run(rerun_on_engine_error(fn, 5, heard.append))
    assert len(heard) == 2


def test_rollout_clients_rerun_episodes_through_faults(shop_tasks):
    served = []

    async def episode(request):
        body = await request.json()
        served.append(body["sample_index"])
        traj = Trajectory(
            task_id=body["task"]["id"],
            messages=[],
            termination=Termination.USER_STOP,
            error=str(body["seed"]),
        )
        return web.json_response(traj.model_dump(mode="json"))

    async def health(request):
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/episode", episode)
    app.router.add_get("/health", health)

    async def main():
        up, front, proxy = await _stack(app, rate=0.25, seed=3, hang_s=1.5, slow_s=0.1, retry_after_s=0.01)
        # (after a failure the client checks /health again, through the same faults: 12 tries)
        remote = RemoteEpisodes(
            [str(front.make_url("")).rstrip("/")], timeout_s=0.8, cooldown_s=0.01, max_attempts=12
        )
        try:
            trajs = await asyncio.gather(*(remote.run(t, i, "g", i) for i, t in enumerate(shop_tasks * 2)))
            return trajs, proxy.counts
        finally:
            await remote.close()
            await front.close()
            await up.close()

    trajs, counts = asyncio.run(main())
    assert [t.error for t in trajs] == [str(i) for i in range(len(shop_tasks) * 2)]
    assert sum(n for f, n in counts.items() if f != "ok") > 10


def _shop_pool(root, n=3):
    from eigen_core.pool import PoolWriter
    from synth.config import ProceduralConfig
    from synth.procedural.shop import generate_shop_task

    cfg = ProceduralConfig(seed=3, num_tasks=n)
    with PoolWriter(root) as w:
        for i in range(n):
            w.add(generate_shop_task(cfg, i).model_copy(update={"split": "test"}))


def test_an_endpoint_eval_through_faults_gives_the_same_results(tmp_path):
    from eigen_apps.eval.config import EvalRunConfig
    from eigen_core.configio import load_config
    from eigen_jax.eval import _main

    _shop_pool(tmp_path / "pool")
    tok = build_small_tokenizer(["hello, I will look up your order now", "get_order cancel_order"], 300)

    def cfg(url, out):
        return load_config(
            EvalRunConfig,
            ROOT / "configs/eval_shop.yaml",
            [
                f"run.out_dir={out}", "eval.trials=3", "run.progress=false", "episode.max_steps=6",
                f"pool.dir={tmp_path / 'pool'}", "agent.kind=endpoint", f"agent.url={url}",
                "agent.model=m", "agent.max_tokens=6", "agent.timeout_s=0.8", "agent.max_retries=6",
            ],
        )  # fmt: skip

    async def main():
        up, front, proxy = await _stack(
            Server(SeededSampler(), tok, "m").app(),
            rate=0.2,
            seed=5,
            hang_s=1.5,
            slow_s=0.1,
            retry_after_s=0.01,
        )
        try:
            clean = await _main(cfg(str(up.make_url("")).rstrip("/"), tmp_path / "clean"))
            flaky = await _main(cfg(str(front.make_url("")).rstrip("/"), tmp_path / "flaky"))
            return clean, flaky, proxy.counts
        finally:
            await front.close()
            await up.close()

    clean, flaky, counts = asyncio.run(main())
    assert flaky["pass_hat_k"] == clean["pass_hat_k"] and flaky["terminations"] == clean["terminations"]
    faults = sum(n for f, n in counts.items() if f not in ("ok", "slow"))
    assert faults > 0 and flaky["faults"]["request_retries"] >= faults - 2 * flaky["faults"]["episodes_rerun"]
    assert clean["faults"] == {"request_retries": 0, "episodes_rerun": 0, "rerun_reasons": []}
    trajs = [
        [json.loads(x)["messages"] for x in (tmp_path / d / "trajectories.jsonl").read_text().splitlines()]
        for d in ("clean", "flaky")
    ]
    assert sorted(map(json.dumps, trajs[0])) == sorted(map(json.dumps, trajs[1]))  # the same episodes


def test_a_synth_round_through_faults_completes_and_counts_its_retries(tmp_path):
    from eigen_core.configio import load_config
    from eigen_core.pool import TaskPool
    from synth.run import SynthRunConfig, run_synth
    from synth.scripted import ScriptedEndpoint

    async def main():
        async with ScriptedEndpoint() as ep:
            proxy = FaultProxy(ep.url, 0.2, seed=7, hang_s=3.0, slow_s=0.1, retry_after_s=0.01)
            front = TestServer(proxy.app())
            await front.start_server()
            url = str(front.make_url("")).rstrip("/")
            roles = ["planner", "synthesizer", "judge", "user", "assistant", "reflector"]
            over = [
                # 2 s: a hang (3 s) times out, a sound answer on a loaded CI machine does not (at
                # 1 s one did, and its retry had no injected fault to count against)
                f"endpoints.{r}={{kind: endpoint, url: '{url}', timeout_s: 2.0, max_retries: 6}}"
                for r in roles
            ]
            cfg = load_config(
                SynthRunConfig,
                ROOT / "configs/synth_shop_scripted.yaml",
                [
                    f"synth.out_dir={tmp_path}/run", f"pool.dir={tmp_path}/pool", "synth.progress=false",
                    "synth.rounds=2", "synth.attempts_per_round=12", *over,
                ],
            )  # fmt: skip
            try:
                return await run_synth(cfg), proxy.counts, proxy.abandoned
            finally:
                await front.close()

    report, counts, abandoned = asyncio.run(main())
    journal = (tmp_path / "run/journal.jsonl").read_text().splitlines()
    assert len(journal) == 24 and [r["proposed"] for r in report["rounds"]] == [12, 12]
    assert len(TaskPool(tmp_path / "pool")) == report["accepted"] > 0
    faults = sum(n for f, n in counts.items() if f not in ("ok", "slow"))
    # each fault retried once, and each sound answer the client stopped waiting for (a loaded
    # machine) once more
    assert faults > 10 and report["retries"] == faults + abandoned, (report["retries"], counts, abandoned)
