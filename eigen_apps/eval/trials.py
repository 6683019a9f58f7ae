"""n trials per task of one agent, appended to a JSONL file as they finish; a rerun skips the
trials already there (an interrupted eval resumes without redoing finished work).

Each record carries a key of the settings that produced it (seed, agent checkpoint, user,
episode limits...): a rerun under other settings neither counts nor redoes-over those trials —
they stay in the file (nothing is lost) and the new settings' trials are run and appended.

The episodes come from any ``run(task, seed, group_id, sample_index) -> Trajectory`` with the
reward set: an ``rollout.workflow.EpisodeWorkflow``'s ``run``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from eigen_core.contracts import Task, Trajectory
from eigen_core.crashpoints import crash_point
from rollout import lockstep
from rollout.http_engine import rerun_on_engine_error
from rollout.lockstep import Cohort

RunFn = Callable[[Task, int, str, int], Awaitable[Trajectory]]


def trial_seed(seed: int, task_index: int, trial: int) -> int:
    """Trial ``trial`` of task ``task_index``: the same seeds for every agent evaluated with the
    same ``seed`` (common random numbers make agent comparisons less noisy)."""
    return int(np.random.SeedSequence([seed, task_index, trial, 0xE7A1]).generate_state(1)[0] % 2**31)


def checkpoint_identity(hf_dir: str | Path | None) -> dict[str, Any] | None:
    """What tells one export at ``hf_dir`` from a later one written there: path, size and mtime of
    its weight files (a rerun stage rewrites them). None for a from-scratch init."""
    if hf_dir is None:
        return None
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    return {"path": str(hf_dir), "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def trials_key(seed: int, settings: Mapping[str, Any] | None = None) -> str:
    """The key ``run_trials`` tags its records with: a short stable hash of the seed and
    ``settings`` (JSON-able)."""
    blob = json.dumps({"seed": seed, **(settings or {})}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _records(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line (killed writer)
                continue
    return out


def _by_trial(records: list[dict], key: str | None) -> dict[tuple[str, int], dict]:
    return {(r["task_id"], r["trial"]): r for r in records if r.get("settings") == key}


def read_trials(path: Path, key: str | None = None) -> dict[tuple[str, int], dict]:
    """Finished trials in ``path`` by (task id, trial) recorded under settings ``key``
    (``trials_key``); a torn last line (killed writer) is ignored."""
    return _by_trial(_records(path), key)


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
    settings: Mapping[str, Any] | None = None,
    reruns: list[str] | None = None,
    cohorts: Callable[[int], Cohort] | None = None,
) -> dict[str, list[float]]:
    """Rewards per task id (``trials`` each) from ``out`` plus the trials it lacked. ``settings``:
    what else decides an episode (agent, user, limits); only records made with the same
    ``settings`` and ``seed`` are reused. An episode whose engine failed for good (retries spent)
    is rerun from scratch, twice at most; ``reruns`` collects why.

    ``cohorts``: ``n -> Cohort`` makes the run reproducible bit for bit on embedded engines: the
    missing trials run in waves of ``concurrency``, each wave one lockstep cohort
    (``rollout.lockstep``), one wave after another (a wave waits for its longest episode)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    key = trials_key(seed, settings)
    records = _records(out)
    done = _by_trial(records, key)
    other = sum(r.get("settings") != key for r in records)
    if other > 0:
        print(
            f"[{desc}] {out}: {other} trials recorded under other settings (seed, agent, user, "
            "limits) are kept in the file but not counted; running this configuration's trials",
            file=sys.stderr,
        )
    if out.exists() and not out.read_text().endswith("\n") and out.stat().st_size:
        with out.open("a") as f:  # a torn last line: start the next record on a fresh line
            f.write("\n")
    todo = [(i, t, k) for i, t in enumerate(tasks) for k in range(trials) if (t.id, k) not in done]
    sem = asyncio.Semaphore(concurrency)
    _heard = reruns if reruns is not None else []
    bar = tqdm(
        total=len(tasks) * trials,
        initial=len(tasks) * trials - len(todo),
        desc=desc,
        unit="ep",
        disable=not progress,
    )

    async def one(i: int, task: Task, k: int) -> None:
        async with sem:
            traj = await lockstep.member(
                (i, k),
                lambda: rerun_on_engine_error(
                    lambda: run(task, trial_seed(seed, i, k), f"eval-{i}", k), 3, _heard.append
                ),
            )
        info = traj.reward_info
        rec = {
            "task_id": task.id,
            "trial": k,
            "settings": key,
            "reward": traj.reward,
            "termination": traj.termination.value,
            "components": info.components if info else {},
            "reasons": info.reasons if info else {},
            "agent_tokens": sum(traj.loss_mask),
            "turns": sum(m.role == "assistant" for m in traj.messages),
        }
        done[(task.id, k)] = rec
        line = json.dumps(rec)
        with out.open("a") as f:
            crash_point("eval.torn_line", lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line + "\n")
        bar.update()

    try:
        if cohorts is None:
            await asyncio.gather(*(one(*x) for x in todo))
        else:
            loop = asyncio.get_running_loop()
            for w in range(0, len(todo), concurrency):
                wave = todo[w : w + concurrency]
                cohort = cohorts(len(wave))
                await asyncio.gather(
                    *(loop.create_task(one(*x), context=lockstep.in_cohort(cohort)) for x in wave)
                )
    finally:
        bar.close()
    return {t.id: [float(done[(t.id, k)]["reward"] or 0.0) for k in range(trials)] for t in tasks}
