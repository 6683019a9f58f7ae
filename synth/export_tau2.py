"""``python -m synth.export_tau2 --pool DIR --domain airline --out tasks.json`` (or ``--config
X.yaml``: ``pool.dir``, ``domain.name``, ``export.*``; the flags are aliases): synthesized tasks
of a tau² domain in tau²-bench's own task format (a JSON list of ``tau2.data_model.tasks.Task``).

tau² has no executable checker: the export scores with what tau² knows — the DB-hash check
against the gold replay and the required outputs (``reward_basis: [DB, COMMUNICATE]``); the
checker stays in our pool. ``--check`` replays every exported task's gold actions through our
episode runner and scores the result with tau²'s own evaluator; a task scoring below 1.0 is
reported and not exported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pydantic import Field, model_validator
from tqdm import tqdm

from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args
from eigen_core.contracts import Task
from eigen_core.domains import get_domain
from eigen_core.pool import PoolError, TaskPool
from rollout.episode import run_episode
from rollout.gold_replay import GoldScript, gold_parties

TAU2_DOMAINS = ("airline", "retail", "telecom")


class ExportSection(Section):
    out: str = Field("tasks.json", min_length=1)
    """Output JSON file (a list of tau²'s ``Task``)."""
    split: str | None = None
    """Only this pool split (None: every task of the domain)."""
    check: bool = False
    """Keep only tasks whose gold replay tau²'s evaluator scores 1.0 (the others are reported)."""


class ExportConfig(Section):
    """The sections ``synth.export_tau2`` reads."""

    domain: DomainConfig = DomainConfig()
    """The tau² domain whose tasks are exported."""
    pool: PoolConfig = PoolConfig()
    """The pool the tasks come from."""
    export: ExportSection = ExportSection()
    """Where the export goes, which tasks."""

    @model_validator(mode="after")
    def _tau2_domain(self) -> ExportConfig:
        if self.domain.name not in TAU2_DOMAINS:
            raise ValueError(
                f"domain.name: {self.domain.name!r} is not a tau² domain ({', '.join(TAU2_DOMAINS)})"
            )
        return self


FLAGS = {
    "--pool": ("pool.dir", str),
    "--domain": ("domain.name", str),
    "--out": ("export.out", str),
    "--split": ("export.split", str),
    "--check": ("export.check", bool),
}
"""Flags that are aliases of config keys."""


def for_tau2(task: Task) -> Task:
    """The task with a reward basis tau² can score (the checker dropped from it)."""
    basis = [b for b in (task.reward_basis or ["db", "outputs"]) if b != "checker"] or ["db"]
    return task.model_copy(update={"reward_basis": basis, "checker": None})


def export_task(task: Task) -> dict[str, Any]:
    """One task as tau²'s ``Task`` JSON."""
    from eigen_core.domains.tau2 import to_tau2

    return to_tau2(for_tau2(task)).model_dump(mode="json")


async def gold_reward(task: Task) -> float:
    """tau²'s evaluator's reward for the task's gold actions, acted out through an episode."""
    from verifiers.tau2_eval import tau2_reward

    t = for_tau2(task)
    agent, user = gold_parties(GoldScript(t))
    traj = await run_episode(t, get_domain(t.domain), agent, user, max_steps=200)
    return float(tau2_reward(t, traj).reward)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synth.export_tau2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    add_flag_aliases(parser, FLAGS)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(ExportConfig, args, alias_overrides(args, FLAGS))
    e = cfg.export
    try:
        tasks = [t for t in TaskPool(cfg.pool.dir).tasks(e.split) if t.domain == cfg.domain.name]
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out, failed = [], []
    for t in tqdm(tasks, desc="export", unit="task", disable=args.no_progress):
        if e.check:
            reward = asyncio.run(gold_reward(t))
            if reward < 1.0:
                failed.append({"task": t.id, "gold_reward": reward})
                continue
        out.append(export_task(t))
    with open(e.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({"exported": len(out), "failed_gold_replay": failed, "out": e.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
