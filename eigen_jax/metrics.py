"""Training metrics: one JSON line per step, TensorBoard scalars, and a console progress line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def host_rss_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux's ``/proc/self/statm``; None elsewhere).
    Logged with every step, i.e. at the same point of each step's cycle, which is what makes a
    trend readable: sampled at random moments, RSS swings with whatever batch is in flight."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MetricsLogger:
    """Writes ``{dir}/metrics.jsonl`` and TensorBoard events under ``{dir}/tb``.

    ``resume_step``: a resumed run drops lines past the checkpoint it restarts from (they were
    logged by the killed run after its last save and will be logged again), so the file reads
    as one uninterrupted run. ``enabled=False`` (every process but the first of a multi-process
    run) writes and prints nothing.
    """

    def __init__(
        self,
        directory: str | Path,
        stage: str,
        total_steps: int,
        *,
        log_every: int = 10,
        console: bool = True,
        resume_step: int | None = None,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.stage, self.total, self.log_every, self.console = stage, total_steps, log_every, console
        if not enabled:
            return
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))
        except ImportError:  # tensorboardX ships with the jax extra; JSONL is the record
            self._tb = None
        self._t0 = time.perf_counter()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if (rss := host_rss_mb()) is not None:
            metrics = {**metrics, "host_rss_mb": round(rss, 1)}
        row = {"step": step, "time": round(time.perf_counter() - self._t0, 3), **metrics}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        if self.console and (step % self.log_every == 0 or step == self.total):
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
            print(f"[{self.stage}] step {step}/{self.total} {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
