"""``python -m eigen_apps.selfcheck --pool DIR`` (or ``--config X.yaml``, whose ``pool.dir`` it reads):
run model-free agents on a pool and score them.

Three scripted agents play every task against the scripted user: ``oracle`` (gold actions),
``idle`` (does nothing) and ``perturbed`` (gold minus its last write, or plus a forbidden write).
A sound task set and verifier give oracle_pass ~ 1, perturbed_pass ~ 0, and idle_pass equal to
the share of tasks whose correct outcome is to change nothing. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

from tqdm import tqdm

from eigen_core.config import PoolConfig
from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args
from eigen_core.contracts import Task
from eigen_core.domain import Domain
from eigen_core.domains import get_domain
from eigen_core.pool import PoolError, TaskPool
from rollout.agents import Agent, IdleAgent, OracleAgent
from rollout.config import EpisodeConfig
from rollout.workflow import AgentFactory, ScoredEpisodes, scripted_user
from verifiers.config import VerifierConfig
from verifiers.perturb import expects_no_change, perturbations
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox


class SelfcheckConfig(Section):
    """The sections ``eigen_apps.selfcheck`` reads."""

    episode: EpisodeConfig = EpisodeConfig()
    """Step limit, prompt, concurrency, the scripted user's patience."""
    verifier: VerifierConfig = VerifierConfig()
    """Reward components and the checker sandbox."""
    pool: PoolConfig = PoolConfig()
    """The pool whose tasks are checked (``--pool`` sets ``pool.dir``)."""


FLAGS = {"--pool": ("pool.dir", str)}
"""Flags that are aliases of config keys."""


def _workflows(domain: Domain, cfg: SelfcheckConfig, verifier: Verifier) -> dict[str, ScoredEpisodes]:
    """The three scripted agents as workflows (``perturbed`` plays a task's first near miss)."""

    def near_miss(task: Task, seed: int) -> Agent:
        return OracleAgent(task, actions=perturbations(task, domain.write_tools)[0][1])

    agents: dict[str, AgentFactory] = {
        "oracle": lambda task, seed: OracleAgent(task),
        "idle": lambda task, seed: IdleAgent(),
        "perturbed": near_miss,
    }
    ep = cfg.episode
    user = scripted_user(ep.user_patience)  # model-free: whatever plays the user in LM episodes
    return {
        name: ScoredEpisodes(
            domain, agent=a, user=user, score=verifier.score, max_steps=ep.max_steps, prompt=ep.prompt
        )
        for name, a in agents.items()
    }


async def selfcheck(
    tasks: list[Task], cfg: SelfcheckConfig, *, progress: bool = True, trajectories: TextIO | None = None
) -> dict[str, Any]:
    """Play the three scripted agents on ``tasks``; return pass rates and failure samples.

    With ``trajectories``, every scored episode is written to it as a JSON line
    ``{"agent": name, "trajectory": Trajectory}``.
    """
    t0 = time.perf_counter()
    vc = cfg.verifier
    passed: dict[str, list[float]] = {"oracle": [], "idle": [], "perturbed": []}
    terminations: Counter = Counter()
    failures: list[dict[str, Any]] = []
    no_change = 0
    sem = asyncio.Semaphore(cfg.episode.concurrency)
    with Sandbox.from_config(vc) as sandbox:
        confinement = sandbox.describe()
        workflows: dict[str, dict[str, ScoredEpisodes]] = {}  # per domain

        async def episode(task: Task, name: str) -> None:
            traj = await workflows[task.domain][name].run(task, 0)
            info = traj.reward_info
            assert info is not None
            if trajectories is not None:
                trajectories.write(
                    json.dumps({"agent": name, "trajectory": traj.model_dump(mode="json")}) + "\n"
                )
            passed[name].append(info.reward)
            terminations[f"{name}:{traj.termination.value}"] += 1
            if (name == "oracle" and info.reward < 1) or (name == "perturbed" and info.reward > 0):
                failures.append({"task": task.id, "agent": name, "reasons": info.reasons})

        bar = tqdm(total=len(tasks), desc="selfcheck", unit="task", disable=not progress)

        async def play_and_tick(task: Task) -> None:
            # Bound tasks in flight (not episodes), so tasks finish in order and progress is smooth.
            nonlocal no_change
            async with sem:
                domain = get_domain(task.domain)
                if task.domain not in workflows:
                    workflows[task.domain] = _workflows(domain, cfg, Verifier(domain, sandbox, vc.components))
                no_change += expects_no_change(task, domain.write_tools)
                near_miss = bool(perturbations(task, domain.write_tools))
                names = ["oracle", "idle"] + (["perturbed"] if near_miss else [])
                await asyncio.gather(*(episode(task, n) for n in names))
            bar.update()

        await asyncio.gather(*(play_and_tick(t) for t in tasks))
        bar.close()

    def rate(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "tasks": len(tasks),
        "oracle_pass": rate(passed["oracle"]),
        "idle_pass": rate(passed["idle"]),
        "perturbed_pass": rate(passed["perturbed"]),
        "no_change_share": round(no_change / len(tasks), 4) if tasks else None,
        "perturbed_tasks": len(passed["perturbed"]),
        "terminations": dict(sorted(terminations.items())),
        "failures": failures[:20],
        "seconds": round(time.perf_counter() - t0, 3),
        "sandbox": confinement,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eigen_apps.selfcheck", description=__doc__)
    add_config_args(parser)
    add_flag_aliases(parser, FLAGS)
    parser.add_argument("--split", help="only this split (default: all tasks)")
    parser.add_argument("--limit", type=int, help="only the first N tasks")
    parser.add_argument("--trajectories", metavar="FILE", help="also write every scored episode here (JSONL)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(SelfcheckConfig, args, alias_overrides(args, FLAGS))
    try:
        tasks = list(TaskPool(cfg.pool.dir).tasks(args.split))
    except PoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = tasks[: args.limit] if args.limit else tasks
    if not tasks:
        print(
            f"error: no tasks in {cfg.pool.dir}" + (f" (split {args.split})" if args.split else ""),
            file=sys.stderr,
        )
        return 2
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.trajectories, "w")) if args.trajectories else None
        result = asyncio.run(selfcheck(tasks, cfg, progress=not args.no_progress, trajectories=out))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
