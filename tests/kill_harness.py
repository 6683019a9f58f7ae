"""kill -9 a command again and again, resuming each time, then let it finish.

Rounds go on until ``kills`` kills have landed (at most three times as many rounds): each either
kills at a seeded random time, between ``startup_s`` and ``startup_s + window_s`` after start (so
every round makes a little progress and the run outlasts the kills), or arms one of the named
crash points (``eigen_core.crashpoints``: between a shard's write and its publication,
inside a checkpoint save, halfway through a journal line) at a random hit count. Used by
tests/test_kill_resume.py and tools/bench/kills.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KillReport:
    rounds: int = 0
    killed: Counter = field(default_factory=Counter)
    """Kills that landed, by how: ``time`` or the crash point's name."""
    finished_early: int = 0
    """Rounds whose run completed before the kill (the next round starts a finished run)."""
    final_returncode: int | None = None

    @property
    def kills(self) -> int:
        return sum(self.killed.values())


def kill_and_resume(
    cmd: Callable[[int], Sequence[str]],
    *,
    kills: int,
    seed: int,
    window_s: float,
    startup_s: float = 0.0,
    points: Sequence[str] = (),
    max_hit: int = 3,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 900,
    log: Path | None = None,
) -> KillReport:
    """``cmd(round)`` is the command line of a round (round 0 starts, the others resume)."""
    rng = random.Random(seed)
    report = KillReport()
    base = dict(os.environ if env is None else env)
    out = open(log, "a") if log is not None else subprocess.DEVNULL
    try:
        for r in range(3 * kills):
            if report.kills == kills:
                break
            report.rounds += 1
            point = rng.choice(points) if points and rng.random() < 0.5 else None
            round_env = dict(base)
            if point is not None:
                round_env["EIGEN_CRASH_AT"] = f"{point}:{rng.randint(1, max_hit)}"
            proc = subprocess.Popen(list(cmd(r)), env=round_env, cwd=cwd, stdout=out, stderr=out)
            if point is None:
                deadline = time.monotonic() + startup_s + rng.uniform(0.0, window_s)
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.01)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=timeout_s)
            if proc.returncode == -signal.SIGKILL:
                report.killed[point or "time"] += 1
            elif proc.returncode == 0:
                report.finished_early += 1
            else:
                raise RuntimeError(f"round {r}: {list(cmd(r))} exited with {proc.returncode} (see {log})")
        final = subprocess.run(
            list(cmd(report.rounds)), env=base, cwd=cwd, stdout=out, stderr=out, timeout=timeout_s
        )
        report.final_returncode = final.returncode
    finally:
        if log is not None:
            out.close()
    return report


def record(stage: str, report: KillReport, exact: str) -> None:
    """Append a stage's figures to ``$EIGEN_KILL_REPORT`` (JSONL) when set (tools/bench/kills.py)."""
    path = os.environ.get("EIGEN_KILL_REPORT")
    if path:
        row = {"stage": stage, "rounds": report.rounds, "killed": dict(report.killed), "exact": exact,
               "resumed": report.final_returncode == 0}  # fmt: skip
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
