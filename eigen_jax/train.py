"""``python -m eigen_jax.train --config configs/X.yaml [key.path=value ...]``

The composition root: runs the stages the config lists, in order, and writes a summary to
``run.out_dir``. Stages now: ``generate`` (procedural tasks into the pool) and ``selfcheck``
(model-free episodes through the verifier). SFT, GRPO and eval stages join as they land.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from eigen_jax.config import RunConfig
from rollout.configio import add_config_args, config_from_args, dump_config
from rollout.pool import TaskPool


def _stage_generate(cfg: RunConfig) -> dict[str, Any]:
    from synth.procedural import generate_to_pool

    report = generate_to_pool(
        cfg.domain.name, cfg.procedural, cfg.pool, cfg.verifier, progress=cfg.run.progress
    )
    return report.as_dict()


def _stage_selfcheck(cfg: RunConfig) -> dict[str, Any]:
    from verifiers.selfcheck import SelfcheckConfig, selfcheck

    tasks = list(TaskPool(cfg.pool.dir).tasks())
    sc = SelfcheckConfig(episode=cfg.episode, verifier=cfg.verifier)
    return asyncio.run(selfcheck(tasks, sc, progress=cfg.run.progress))


STAGES = {"generate": _stage_generate, "selfcheck": _stage_selfcheck}


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run every configured stage; returns (and writes) ``{stage: summary}``."""
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    summary: dict[str, Any] = {}
    for stage in cfg.run.stages:
        t0 = time.perf_counter()
        print(f"[{cfg.run.name}] stage {stage} ...", file=sys.stderr, flush=True)
        summary[stage] = STAGES[stage](cfg)
        print(f"[{cfg.run.name}] stage {stage} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _print_table(summary: dict[str, Any]) -> None:
    if "generate" in summary:
        g = summary["generate"]
        print(
            f"tasks: {g['accepted']} accepted, {g['rejected']} rejected, "
            f"{g['already_in_pool']} already in pool (splits {g['splits']}; {g['seconds']}s)"
        )
    if "selfcheck" in summary:
        s = summary["selfcheck"]
        print(f"{'agent':<10} {'pass rate':>9}")
        for agent in ("oracle", "idle", "perturbed"):
            print(f"{agent:<10} {s[agent + '_pass']:>9.3f}")
        print(f"share of tasks whose correct outcome changes nothing: {s['no_change_share']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eigen_jax.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(RunConfig, args, foreign_sections=())
    summary = run(cfg)
    _print_table(summary)
    print(f"summary written to {Path(cfg.run.out_dir) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
