"""Checker sandbox throughput: warm fork-per-check workers vs a fresh interpreter per check.

    python tools/bench/sandbox.py [--repeats 5] [--checks 200]

Both run the same generated procedural checkers on the same inputs with the same limits and
confinement; the peer (``spawn``) is what a sandbox without warm workers does: one
``python -I -S`` per check, each building the kernel layer anew.
Writes its table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

from _report import machine, median_time, write_section

from eigen_core.domains import get_domain
from synth.config import ProceduralConfig
from synth.procedural.shop import generate_shop_task
from verifiers.reward import gold_state
from verifiers.sandbox import _WORKER, Sandbox


def _cases(n: int) -> list[tuple[str, list]]:
    shop = get_domain("shop")
    cfg = ProceduralConfig(seed=0)
    out = []
    for i in range(n):
        t = generate_shop_task(cfg, i)
        said = [{"role": "assistant", "content": "; ".join(t.required_outputs)}]
        out.append((t.checker, [t.initial_state.data, gold_state(shop, t), said]))
    return out


def _spawn_check(code: str, args: list) -> bool:
    # The worker script serves one request and exits: a fresh interpreter per check, under the
    # same kernel layer (its first output line is the hello, the second the result).
    req = {"code": code, "entry": "check", "args": args, "timeout_s": 5.0, "memory_mb": 512}
    opts = json.dumps({"kernel": True, "scratch_mb": 64})
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            [sys.executable, "-I", "-S", str(_WORKER), scratch, opts],
            input=json.dumps(req) + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.splitlines()[-1])["passed"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checks", type=int, default=200)
    args = ap.parse_args()
    cases = _cases(args.checks)
    results = {}
    for workers in (1, 2):
        with Sandbox(workers=workers) as sb:

            def run(sb=sb, workers=workers):
                with ThreadPoolExecutor(workers) as ex:
                    assert all(r.passed for r in ex.map(lambda c: sb.run(*c), cases))

            run()  # warm-up
            layers = sb.layers
            med, _ = median_time(run, args.repeats)
            results[f"warm workers ({workers})"] = len(cases) / med
    few = cases[: max(10, args.checks // 10)]

    def spawn():
        with ThreadPoolExecutor(2) as ex:
            assert all(ex.map(lambda c: _spawn_check(*c), few))

    med, _ = median_time(spawn, args.repeats)
    results["fresh interpreter per check (2 threads), peer"] = len(few) / med
    peer = results["fresh interpreter per check (2 threads), peer"]
    rows = "\n".join(f"| {k} | {v:,.0f} | {v / peer:.1f}× |" for k, v in results.items())
    body = f"""## Checker sandbox throughput

`python tools/bench/sandbox.py --repeats {args.repeats} --checks {args.checks}` — {machine()}.
Generated procedural checkers on their gold final states; median of {args.repeats} runs. Every
check runs confined (layers applied on this machine: {", ".join(layers)}); the peer starts a fresh
interpreter per check that builds the same kernel layer. Namespaces and the read-only root are
built once per warm worker; each check adds only the uid drop and the seccomp filter.

| mode | checks/s | vs peer |
|---|---:|---:|
{rows}
"""
    print(body)
    write_section("sandbox", body)


if __name__ == "__main__":
    main()
