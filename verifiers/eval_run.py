"""n trials per task of one agent, appended to a JSONL file as they finish; a rerun skips the
trials already there (an interrupted eval resumes without redoing finished work).

The episodes come from any ``run(task, seed, group_id, sample_index) -> Trajectory`` with the
reward filled in (``rollout.lm_runner.LMEpisodes``: an in-process or HTTP engine).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rollout.contracts import Task, Trajectory

RunFn = Callable[[Task, int, str, int], Awaitable[Trajectory]]


def trial_seed(seed: int, task_index: int, trial: int) -> int:
    """Trial ``trial`` of task ``task_index``: the same seeds for every agent evaluated with the
    same ``seed`` (common random numbers make agent comparisons less noisy)."""
    return int(np.random.SeedSequence([seed, task_index, trial, 0xE7A1]).generate_state(1)[0] % 2**31)


def read_trials(path: Path) -> dict[tuple[str, int], dict]:
    """Finished trials in ``path`` by (task id, trial); a torn last line (killed writer) is ignored."""
    done: dict[tuple[str, int], dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[(rec["task_id"], rec["trial"])] = rec
    return done


async def run_trials(
    tasks: Sequence[Task],
    run: RunFn,
    trials: int,
    seed: int,
    out: Path,
    *,
    concurrency: int = 32,
    desc: str = "eval",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Rewards per task id (``trials`` each) from ``out`` plus the trials it lacked."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_trials(out)
    if out.exists() and not out.read_text().endswith("\n") and out.stat().st_size:
        with out.open("a") as f:  # a torn last line: start the next record on a fresh line
            f.write("\n")
    todo = [(i, t, k) for i, t in enumerate(tasks) for k in range(trials) if (t.id, k) not in done]
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(
        total=len(tasks) * trials,
        initial=len(tasks) * trials - len(todo),
        desc=desc,
        unit="ep",
        disable=not progress,
    )

    async def one(i: int, task: Task, k: int) -> None:
        async with sem:
            traj = await run(task, trial_seed(seed, i, k), f"eval-{i}", k)
        info = traj.reward_info
        rec = {
            "task_id": task.id,
            "trial": k,
            "reward": traj.reward,
            "termination": traj.termination.value,
            "components": info.components if info else {},
            "reasons": info.reasons if info else {},
            "agent_tokens": sum(traj.loss_mask),
            "turns": sum(m.role == "assistant" for m in traj.messages),
        }
        done[(task.id, k)] = rec
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.update()

    try:
        await asyncio.gather(*(one(i, t, k) for i, t, k in todo))
    finally:
        bar.close()
    return {t.id: [float(done[(t.id, k)]["reward"] or 0.0) for k in range(trials)] for t in tasks}
