"""Which task group ``i`` plays, over a task pool that grows while training reads it.

A synth run (``python -m synth.run``) may publish tasks into the pool that GRPO is training
from. ``LiveTasks`` is the sequence GRPO's groups index: ``tasks[i]`` is the task group ``i``
plays. The sequence is a list of *segments*, each an ordering of task ids:

- it starts with one epoch of the split as the pool holds it (the permutation grain's
  ``shuffle(seed)`` gives, so a pool that never grows plays exactly what it always did);
- every ``refresh_every`` indices (0: never) the manifest is re-read, and the train tasks
  published since become a segment of their own, shuffled, played next: the rest of the current
  segment moves behind them (fresh tasks first);
- where the sequence runs out, the manifest is re-read too: tasks published since form the next
  segment, or, when there are none, a new epoch over every task of the split begins.

A refresh happens when an index at or past its point is first asked for, before that index is
decided, and an index once decided never changes. So ``tasks[i]`` is a function of the seed and
of the pool's history (which tasks it listed at each refresh point), not of timing. The state
(``state_dict``: the segments from the first index not yet consumed on, the ids seen, the next
refresh point) goes into the checkpoint: a resumed run plays the same tasks at the same indices,
neither repeating nor skipping one, and refreshes from there.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from eigen_core.contracts import Task
from eigen_core.pool import TaskPool


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Epoch ``epoch`` of grain's ``MapDataset.range(n).shuffle(seed).repeat()``."""
    import grain  # lazy: only readers that want it pay for it

    ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
    return [int(ds[epoch * n + j]) for j in range(n)]


class LiveTasks:
    """``tasks[i]``: the task group ``i`` plays (see the module docstring).

    Args:
        root: the pool (a path or a URL).
        split: the split to train on.
        seed: the order's seed.
        refresh_every: re-read the pool every this many indices (0: only when the order runs out).
        limit: only the split's first ``limit`` tasks in pool order (None: all, new ones included).
        domain: only this domain's tasks (None: every task of the split; a pool may hold several
            domains' tasks, e.g. the AReaL-SEA import).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        seed: int = 0,
        refresh_every: int = 0,
        limit: int | None = None,
        domain: str | None = None,
    ):
        if refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0, got {refresh_every}")
        self.root, self.split, self.seed, self.limit = os.fspath(root), split, seed, limit
        self.domain = domain
        self.refresh_every = refresh_every
        self._lock = threading.Lock()
        self._open()
        self._segments: list[tuple[int, list[str]]] = []  # (first index, task ids), in index order
        self._known: set[str] = set()
        self._epochs = self._fresh = 0
        self._next_refresh = refresh_every or None
        self._extend(0)

    def _open(self) -> None:
        self._listing = TaskPool.listing(self.root)
        self._pool = TaskPool(self.root)
        self._where = {tid: n for n, tid in enumerate(self._pool.ids())}
        if self.domain is None:
            ids = self._pool.ids(self.split)
        else:  # the manifest lists ids and splits only: the domain is in the tasks
            ids = [t.id for t in self._pool.tasks(self.split, self.domain)]
        self._ids = ids[: self.limit]

    @property
    def _end(self) -> int:
        return self._segments[-1][0] + len(self._segments[-1][1]) if self._segments else 0

    def __len__(self) -> int:
        """Tasks of the split seen so far."""
        return len(self._known)

    def _new_ids(self) -> list[str]:
        """Re-read the pool if it changed; the split's ids not seen before, in pool order."""
        if TaskPool.listing(self.root) != self._listing:
            self._open()
        return [t for t in self._ids if t not in self._known]

    def _shuffled_new(self, new: list[str]) -> list[str]:
        self._fresh += 1
        self._known.update(new)
        order = np.random.default_rng([self.seed, 1, self._fresh]).permutation(len(new))
        return [new[k] for k in order]

    def _extend(self, at: int) -> None:
        """The order ran out at index ``at``: tasks new since, or the next epoch of them all."""
        new = self._new_ids()
        if not self._ids:
            raise ValueError(f"the pool at {self.root} has no {self.split!r} tasks")
        if not self._segments:  # the first epoch is grain's, as it was before pools grew
            self._known.update(new)
            ids = [new[k] for k in _epoch_order(len(new), self.seed, 0)]
            self._epochs = 1
        elif new:
            ids = self._shuffled_new(new)
        else:
            ids = [self._ids[k] for k in _epoch_order(len(self._ids), self.seed, self._epochs)]
            self._epochs += 1
        self._segments.append((at, ids))

    def _refresh(self, at: int) -> None:
        """Tasks published since go first from index ``at`` on; the rest of the order follows."""
        new = self._new_ids()
        if not new:
            return
        fresh = self._shuffled_new(new)
        out: list[tuple[int, list[str]]] = []
        for start, ids in self._segments:
            if start + len(ids) <= at:
                out.append((start, ids))
            elif start < at:  # cut at ``at``: its tail moves behind the fresh tasks
                out.append((start, ids[: at - start]))
                out.append((at + len(fresh), ids[at - start :]))
            else:
                out.append((start + len(fresh), ids))
        out.append((at, fresh))
        self._segments = sorted(out, key=lambda seg: seg[0])

    def task_id(self, i: int) -> str:
        """The id of the task index ``i`` plays (deciding it, and refreshing, as needed)."""
        if i < 0:
            raise IndexError(i)
        with self._lock:
            while True:
                due = self._next_refresh is not None and i >= self._next_refresh
                if due and self._end >= self._next_refresh:  # decided up to the point: refresh there
                    self._refresh(self._next_refresh)
                    self._next_refresh += self.refresh_every
                elif i >= self._end:
                    self._extend(self._end)
                else:
                    break
            for start, ids in reversed(self._segments):
                if start <= i:
                    return ids[i - start]
        raise AssertionError("unreachable: the segments cover every index below their end")

    def __getitem__(self, i: int) -> Task:
        tid = self.task_id(i)
        return self._pool[self._where[tid]]

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        """What a checkpoint keeps: the order from index ``consumed`` (the first index not yet
        trained on) on, and what the refreshes so far have seen."""
        with self._lock:
            keep = [[s, ids] for s, ids in self._segments if s + len(ids) > consumed]
            return {"segments": keep, "known": sorted(self._known), "epochs": self._epochs,
                    "fresh": self._fresh, "next_refresh": self._next_refresh}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._segments = [(int(s), list(ids)) for s, ids in state["segments"]]
            self._known = set(state["known"])
            self._epochs, self._fresh = int(state["epochs"]), int(state["fresh"])
            self._next_refresh = state["next_refresh"]
            self._open()
            missing = [t for _, ids in self._segments for t in ids if t not in self._where]
            if missing:
                raise ValueError(
                    f"resuming: {len(missing)} tasks of the saved order are no longer in the pool at "
                    f"{self.root} (e.g. {missing[0]}: quarantined?)"
                )
