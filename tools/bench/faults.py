"""Clients against injected faults: requests, faults met per kind, retries, what completed.

    python tools/bench/faults.py [--rate 0.2] [--requests 1000]

Three runs through ``rollout.fault_proxy`` at ``--rate`` (every fault kind, seeded): token-in/out
completions against ``eigen_jax.serve`` (checked equal to the answers without the proxy), an
endpoint eval on the shop domain (checked equal to the same eval without the proxy), and a
two-round synth run with every role on the scripted endpoint. Writes RELIABILITY.md's fault
section; exits 1 if any run did not complete or differed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from _report import RELIABILITY, machine, write_section  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402
from http_helpers import SeededSampler  # noqa: E402

from eigen_core.configio import load_config  # noqa: E402
from eigen_core.tokenizer import build_small_tokenizer  # noqa: E402
from eigen_jax.serve import Server  # noqa: E402
from rollout.engine import SamplingParams  # noqa: E402
from rollout.fault_proxy import FaultProxy  # noqa: E402
from rollout.http_engine import HTTPEngine  # noqa: E402


async def _up(app):
    server = TestServer(app)
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


async def completions(rate: float, n: int) -> dict:
    tok = build_small_tokenizer(["a b c d e"], 260)
    up, up_url = await _up(Server(SeededSampler(), tok, "m").app())
    proxy = FaultProxy(up_url, rate, seed=11, hang_s=1.5, slow_s=0.2, retry_after_s=0.01)
    front, url = await _up(proxy.app())
    direct = HTTPEngine(up_url, "m")
    flaky = HTTPEngine(
        url, "m", timeout_s=0.8, max_retries=8, backoff_s=0.01, max_backoff_s=0.05, concurrency=16
    )
    jobs = [([5 + i % 17, 9, i], SamplingParams(max_new_tokens=4, seed=i)) for i in range(n)]
    want = await asyncio.gather(*(direct.generate(p, s) for p, s in jobs))
    got = await asyncio.gather(*(flaky.generate(p, s) for p, s in jobs))
    same = [g.tokens for g in got] == [w.tokens for w in want]
    out = {"requests": n, "counts": proxy.counts, "retries": flaky.retries, "ok": same}
    for c in (direct, flaky):
        await c.close()
    await front.close()
    await up.close()
    return out


async def endpoint_eval(rate: float, root: Path) -> dict:
    from eigen_apps.eval.config import EvalRunConfig
    from eigen_core.pool import PoolWriter
    from eigen_jax.eval import _main
    from synth.config import ProceduralConfig
    from synth.procedural.shop import generate_shop_task

    pcfg = ProceduralConfig(seed=3, num_tasks=10)
    with PoolWriter(root / "pool") as w:
        for i in range(10):
            w.add(generate_shop_task(pcfg, i).model_copy(update={"split": "test"}))
    tok = build_small_tokenizer(["hello, I will look up your order now", "get_order cancel_order"], 300)
    up, up_url = await _up(Server(SeededSampler(), tok, "m").app())
    proxy = FaultProxy(up_url, rate, seed=5, hang_s=1.5, slow_s=0.1, retry_after_s=0.01)
    front, url = await _up(proxy.app())

    def cfg(u: str, out: str):
        return load_config(
            EvalRunConfig,
            ROOT / "configs/eval_shop.yaml",
            [f"run.out_dir={root / out}", "eval.trials=4", "run.progress=false", "episode.max_steps=6",
             f"pool.dir={root / 'pool'}", "agent.kind=endpoint", f"agent.url={u}", "agent.model=m",
             "agent.max_tokens=6", "agent.timeout_s=0.8", "agent.max_retries=6"],
        )  # fmt: skip

    clean = await _main(cfg(up_url, "clean"))
    flaky = await _main(cfg(url, "flaky"))
    await front.close()
    await up.close()
    same = flaky["pass_hat_k"] == clean["pass_hat_k"] and flaky["terminations"] == clean["terminations"]
    return {"requests": sum(proxy.counts.values()), "counts": proxy.counts, "ok": same,
            "retries": flaky["faults"]["request_retries"], "episodes": 40,
            "reruns": flaky["faults"]["episodes_rerun"]}  # fmt: skip


async def synth_round(rate: float, root: Path) -> dict:
    from synth.run import SynthRunConfig, run_synth
    from synth.scripted import ScriptedEndpoint

    async with ScriptedEndpoint() as ep:
        proxy = FaultProxy(ep.url, rate, seed=7, hang_s=3.0, slow_s=0.1, retry_after_s=0.01)
        front, url = await _up(proxy.app())
        roles = ["planner", "synthesizer", "judge", "user", "assistant", "reflector"]
        over = [
            f"endpoints.{r}={{kind: endpoint, url: '{url}', timeout_s: 1.0, max_retries: 6}}" for r in roles
        ]
        cfg = load_config(
            SynthRunConfig,
            ROOT / "configs/synth_shop_scripted.yaml",
            [f"synth.out_dir={root}/run", f"pool.dir={root}/pool", "synth.progress=false", "synth.rounds=2",
             "synth.attempts_per_round=24", *over],
        )  # fmt: skip
        report = await run_synth(cfg)
        await front.close()
    done = [r["proposed"] for r in report["rounds"]] == [24, 24]
    return {"requests": sum(proxy.counts.values()), "counts": proxy.counts, "retries": report["retries"],
            "ok": done, "accepted": report["accepted"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "completions vs eigen_jax.serve (answers equal to a clean run)": asyncio.run(
                completions(args.rate, args.requests)
            ),
            "endpoint eval, shop, 10 tasks x 4 trials (pass^k equal to a clean run)": asyncio.run(
                endpoint_eval(args.rate, Path(tmp) / "eval")
            ),
            "synth, 2 rounds x 24 attempts, every role through the proxy": asyncio.run(
                synth_round(args.rate, Path(tmp) / "synth")
            ),
        }
    kinds = sorted({k for r in runs.values() for k in r["counts"]} - {"ok"})
    head = "| run | requests | " + " | ".join(kinds) + " | retries | completed as clean |"
    rows = [
        f"| {name} | {r['requests']} | " + " | ".join(str(r["counts"].get(k, 0)) for k in kinds)
        + f" | {r['retries']} | {'yes' if r['ok'] else 'NO'} |"
        for name, r in runs.items()
    ]  # fmt: skip
    ev = next(r for n, r in runs.items() if n.startswith("endpoint eval"))
    body = f"""## Fault injection: runs through `rollout.fault_proxy`

`python tools/bench/faults.py --rate {args.rate:g} --requests {args.requests}` — {machine()}.
{args.rate:.0%} of requests meet a fault drawn uniformly from every kind (seeded); the clients run
with their defaults but for short timeouts (0.8–1 s, so a hang costs seconds) and 6–8 retries.

{head}
|{"---|" * (len(kinds) + 4)}
{chr(10).join(rows)}

Every failed attempt was retried (`retries` = injected faults other than `slow`, which succeed
slowly). The eval reran {ev["reruns"]} of its 40 episodes whose engine failed for good and ended
with the same pass^k and terminations as without faults. A slow-marked test
(`tests/test_rollout_serve.py`) runs GRPO through rollout servers with 20% faults in front of the
policy engine and of each server while one server is killed; its metrics count the retries
(`request_retries_total`, `episodes_rerun`). An endpoint past its failure budget (default 50% of
its last 100 attempts) stops the run with an error naming its URL (`tests/test_faults.py`).
"""
    print(body)
    write_section("faults", body, RELIABILITY)
    return 0 if all(r["ok"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
