"""A synth run's directory: plans per round, the attempt journal, lineage, budget.

    OUT/plans/round_000.json   the plan pairs round 0 runs (written before it starts)
    OUT/journal.jsonl          one AttemptRecord per finished attempt (append + fsync)
    OUT/lineage.jsonl          one record per plan version: where it came from and why
    OUT/budget.json            calls and tokens spent per role so far
    OUT/report.json, report.png

Files are written atomically or appended line by line and fsync'd; a torn last journal line
(a kill mid-write) is ignored on load and cut off before the next append, and its attempt runs
again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eigen_core.crashpoints import crash_point
from eigen_core.storage import atomic_write as _atomic_write
from synth.plans import PlanPair
from synth.worker import AttemptRecord


class StoreError(ValueError):
    """A run directory that cannot be read (names the file and line)."""


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "plans").mkdir(parents=True, exist_ok=True)
        self._mended: set[str] = set()

    # plans -------------------------------------------------------------------------------------
    def plans_path(self, rnd: int) -> Path:
        return self.root / "plans" / f"round_{rnd:03d}.json"

    def load_plans(self, rnd: int) -> list[PlanPair] | None:
        path = self.plans_path(rnd)
        if not path.exists():
            return None
        try:
            return [PlanPair.model_validate(p) for p in json.loads(path.read_text())["plans"]]
        except (ValueError, KeyError) as e:
            raise StoreError(f"{path}: not a plans file ({e})") from None

    def save_plans(self, rnd: int, plans: list[PlanPair]) -> None:
        data = {"round": rnd, "plans": [p.model_dump(mode="json") for p in plans]}
        _atomic_write(self.plans_path(rnd), json.dumps(data, indent=1).encode())

    # journal -----------------------------------------------------------------------------------
    def _mend(self, name: str) -> None:
        """Cut a torn last line (no newline after it), so the next record starts a line."""
        path = self.root / name
        if name in self._mended or not path.exists():
            self._mended.add(name)
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                os.fsync(f.fileno())
        self._mended.add(name)

    def _append(self, name: str, line: str) -> None:
        self._mend(name)
        with open(self.root / name, "a") as f:
            crash_point("synth.torn_line", lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _read_lines(self, name: str) -> list[tuple[int, str]]:
        path = self.root / name
        if not path.exists():
            return []
        lines = path.read_text().split("\n")
        # A line without its newline was torn by a kill: drop it (its attempt reruns).
        complete = lines[:-1]
        return [(i + 1, s) for i, s in enumerate(complete) if s.strip()]

    def journal(self) -> dict[str, AttemptRecord]:
        out: dict[str, AttemptRecord] = {}
        for lineno, line in self._read_lines("journal.jsonl"):
            try:
                rec = AttemptRecord.model_validate_json(line)
            except ValueError as e:
                raise StoreError(f"{self.root / 'journal.jsonl'}:{lineno}: invalid record: {e}") from None
            out[rec.key] = rec
        return out

    def record(self, rec: AttemptRecord) -> None:
        self._append("journal.jsonl", rec.model_dump_json())

    # lineage and budget ------------------------------------------------------------------------
    def add_lineage(self, entry: dict[str, Any]) -> None:
        self._append("lineage.jsonl", json.dumps(entry, sort_keys=True))

    def lineage(self) -> list[dict[str, Any]]:
        return [json.loads(s) for _, s in self._read_lines("lineage.jsonl")]

    def load_budget(self) -> dict[str, dict[str, int]]:
        path = self.root / "budget.json"
        return json.loads(path.read_text()) if path.exists() else {"calls": {}, "tokens": {}}

    def save_budget(self, snapshot: dict[str, dict[str, int]]) -> None:
        _atomic_write(self.root / "budget.json", json.dumps(snapshot).encode())

    def save_json(self, name: str, data: Any) -> None:
        _atomic_write(self.root / name, json.dumps(data, indent=1).encode())
