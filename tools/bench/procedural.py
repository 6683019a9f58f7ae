"""Procedural generation and self-check rates.

    python tools/bench/procedural.py [--repeats 3] [--tasks 1000]

Generation includes every task's validation (gold replay, checker on gold and on near misses, in
the sandbox); the self-check plays three scripted agents per task through the episode runner and
the verifier. The issue's bar: 1,000 tasks generated in under 30 s. Writes to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

from _report import machine, median_time, write_section

from eigen_apps.selfcheck import SelfcheckConfig, selfcheck
from eigen_core.config import PoolConfig
from eigen_core.pool import TaskPool
from synth.config import ProceduralConfig
from synth.procedural import generate_to_pool
from verifiers.config import VerifierConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cfg = ProceduralConfig(num_tasks=args.tasks)
    vc = VerifierConfig()

    def generate():
        shutil.rmtree(tmp / "pool", ignore_errors=True)
        generate_to_pool("shop", cfg, PoolConfig(dir=str(tmp / "pool")), vc, progress=False)

    gen_s, gen_all = median_time(generate, args.repeats)
    tasks = list(TaskPool(tmp / "pool").tasks())
    check_s, _ = median_time(
        lambda: asyncio.run(selfcheck(tasks, SelfcheckConfig(), progress=False)), args.repeats
    )
    shutil.rmtree(tmp)
    body = f"""## Procedural tasks and self-check

`python tools/bench/procedural.py --repeats {args.repeats} --tasks {args.tasks}` — {machine()}.
Median of {args.repeats} runs (generation samples: {", ".join(f"{s:.1f}" for s in gen_all)} s).

| step | seconds for {args.tasks} tasks | rate |
|---|---:|---:|
| generate + validate into a pool (bar: < 30 s) | {gen_s:.1f} | {args.tasks / gen_s:,.0f} tasks/s |
| self-check: 3 scripted episodes/task + rewards | {check_s:.1f} | {3 * args.tasks / check_s:,.0f} ep/s |
"""
    print(body)
    write_section("procedural", body)


if __name__ == "__main__":
    main()
