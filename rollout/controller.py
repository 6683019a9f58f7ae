"""The staleness-bounded asynchronous rollout controller (AReaL-style admission control).

Groups (G episodes of one task) are numbered in the order they start. A batch is B kept groups.
A new group may start only while

    started - dropped < (version + eta + 1) * B

where ``version`` is the learner's current policy version and ``dropped`` counts groups that
dynamic filtering threw away (they free their slot, so filtering cannot starve the learner).
Batches are consumed in start order: batch k is the next B kept groups by index, waiting for a
straggler rather than overtaking it. Together with the admission rule, every group starts at most
``eta`` versions before the update that consumes it (consuming in completion order would let a
slow group fall arbitrarily far behind), and which groups form each batch does not depend on
timing. With ``eta = 0`` the batch for update v is generated entirely by version v: synchronous
GRPO, exactly. Episodes may still span a weight swap when ``eta > 0``; each token carries its
own version.

The controller owns no model and no learner: it calls ``run_group(task, index)`` and hands kept
groups to whoever awaits ``next_batch``. It reads the learner's version from the process's
``PolicyVersion`` (which the weight swap writes) and is woken when it changes.

Deterministic mode (``deterministic=True``) takes timing out of the schedule too. Which groups
start under which version is decided only where the learner's version is known without a race:
when ``next_batch`` is called (after the weight swap: version v for batch v) and as it walks past
a dropped group. The limit is then

    started < (batches_handed_out + eta + 1) * B + floor(dropped_walked / k) * k,   k = clip(eta * B, 1, B)

(drops free slots in chunks of k, counted in index order, never in completion order), and each
admission starts its groups as one lockstep cohort (``rollout.lockstep``) pinned to version v,
so every group is generated wholly by one version and every batch has a fixed make-up. Which
groups feed update v, and which version generated each, is then a function of the groups'
outcomes alone. ``concurrency`` does not apply there (a cohort starts all of its groups at
once: at most (eta + 1) * B groups plus refills are in flight); the staleness bound still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from rollout.lockstep import Cohort, in_cohort
from rollout.version import PolicyVersion

G = TypeVar("G")


def may_start(started: int, dropped: int, version: int, batch_groups: int, max_staleness: int) -> bool:
    """AReaL's admission rule (see the module docstring); pure, for tests and for the bench."""
    return started - dropped < (version + max_staleness + 1) * batch_groups


class RolloutController(Generic[G]):
    """Keeps up to ``concurrency`` groups in flight under the staleness bound.

    Args:
        run_group: ``(index) -> group``: runs group ``index`` (the caller maps it to a task and
            seeds, so a resumed run regenerates the same groups). Exceptions are reported by
            ``next_batch``, not swallowed.
        keep: dynamic filtering: False drops the group (e.g. all rewards equal).
        batch_groups: B, kept groups per learner update.
        max_staleness: eta (0 = synchronous).
        concurrency: most groups in flight at once.
        start_index: the first group index to run (from ``state_dict`` when resuming).
        deterministic: the timing-free schedule of the module docstring; ``members_per_group``
            is then how many episodes (cohort members) each group runs.
    """

    def __init__(
        self,
        run_group: Callable[[int], Awaitable[G]],
        *,
        keep: Callable[[G], bool],
        batch_groups: int,
        max_staleness: int = 2,
        concurrency: int = 8,
        start_index: int = 0,
        version: PolicyVersion | None = None,
        deterministic: bool = False,
        members_per_group: int = 1,
    ):
        if batch_groups < 1 or max_staleness < 0 or concurrency < 1:
            raise ValueError("batch_groups >= 1, max_staleness >= 0 and concurrency >= 1 are required")
        self.run_group, self.keep = run_group, keep
        self.batch_groups, self.max_staleness, self.concurrency = batch_groups, max_staleness, concurrency
        self.policy_version = version or PolicyVersion()
        # Counters relative to the learner's version at construction, so a resumed run admits
        # the same groups for the same updates.
        self._base_version = self.policy_version.value
        self._unsubscribe: Callable[[], None] | None = None
        self.next_index = start_index
        self._in_flight: dict[int, asyncio.Task] = {}
        self._ready: dict[int, G] = {}
        self._dropped: set[int] = set()
        self._next_consume = start_index
        self._error: BaseException | None = None
        self._changed: asyncio.Condition | None = None
        self._producer: asyncio.Task | None = None
        self.stats = {"started": 0, "kept": 0, "dropped": 0}
        """Groups started / kept / dropped since construction (the admission rule counts them)."""
        self.deterministic, self.members_per_group = deterministic, members_per_group
        self._handed = 0  # batches handed out since construction (deterministic mode)
        self._walked_drops = 0  # dropped groups next_batch has walked past (deterministic mode)
        self.cohorts = 0  # lockstep cohorts started (deterministic mode)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.policy_version.value

    def start(self) -> None:
        """Begin producing (call inside the running event loop)."""
        self._changed = asyncio.Condition()
        if self.deterministic:  # admissions happen in next_batch, where the version is known
            self._admit_cohort()
            return
        self._producer = asyncio.create_task(self._produce())
        loop = asyncio.get_running_loop()

        def wake(_: int) -> None:
            # A weight swap may run in another thread: wake the producer in the loop's own (a
            # closed loop has no producer left to wake).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: loop.create_task(self._wake()))

        self._unsubscribe = self.policy_version.on_change(wake)

    async def _wake(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        """Cancel in-flight groups and the producer."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [t for t in (self._producer, *self._in_flight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._in_flight.clear()

    def _admissible(self) -> bool:
        return len(self._in_flight) < self.concurrency and may_start(
            self.stats["started"],
            self.stats["dropped"],
            self.version - self._base_version,
            self.batch_groups,
            self.max_staleness,
        )

    def _deterministic_limit(self) -> int:
        """How many groups may have started by now (deterministic mode; module docstring)."""
        b, eta = self.batch_groups, self.max_staleness
        k = min(max(eta * b, 1), b)
        return (self._handed + eta + 1) * b + math.floor(self._walked_drops / k) * k

    def _admit_cohort(self) -> None:
        """Start every group the deterministic limit allows, as one cohort pinned to the version
        served now."""
        n = self._deterministic_limit() - self.stats["started"]
        if n <= 0:
            return
        want = self._base_version + self._handed
        if self.version != want:
            raise RuntimeError(
                f"deterministic rollouts: the engines serve policy version {self.version} where "
                f"batch {self._handed} expects {want}: swap weights after every update, before "
                "asking for the next batch"
            )
        # at most (eta + 1) * B groups are in flight (module docstring): each cohort's share of
        # the engines' prefix caches is its part of that, so together they hold one budget
        share = n / ((self.max_staleness + 1) * self.batch_groups)
        cohort = Cohort(n * self.members_per_group, self.policy_version, self.version, share)
        self.cohorts += 1
        for _ in range(n):
            index = self.next_index
            self.next_index += 1
            self.stats["started"] += 1
            task = asyncio.get_running_loop().create_task(self._run(index), context=in_cohort(cohort))
            self._in_flight[index] = task

    async def _produce(self) -> None:
        assert self._changed is not None
        while True:
            async with self._changed:
                await self._changed.wait_for(self._admissible)
                index = self.next_index
                self.next_index += 1
                self.stats["started"] += 1
                self._in_flight[index] = asyncio.create_task(self._run(index))

    async def _run(self, index: int) -> None:
        assert self._changed is not None
        try:
            group = await self.run_group(index)
            kept = self.keep(group)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # surfaced by next_batch: a broken run_group is a bug
            async with self._changed:
                self._error = e
                self._in_flight.pop(index, None)
                self._changed.notify_all()
            return
        async with self._changed:
            self._in_flight.pop(index, None)
            if kept:
                self._ready[index] = group
                self.stats["kept"] += 1
            else:
                self._dropped.add(index)
                self.stats["dropped"] += 1
            self._changed.notify_all()

    # -- the learner's side ------------------------------------------------------------------
    def _settled(self) -> bool:
        """The next group to consume has finished (kept or dropped), or something failed."""
        i = self._next_consume
        return i in self._ready or i in self._dropped or self._error is not None

    async def next_batch(self) -> list[G]:
        """The next B kept groups in start order (waiting for a straggler, never overtaking it)."""
        assert self._changed is not None, "call start() first"
        batch: list[G] = []
        if self.deterministic:
            self._admit_cohort()
        async with self._changed:
            while len(batch) < self.batch_groups:
                i = self._next_consume
                await self._changed.wait_for(self._settled)
                if self._error is not None:
                    raise RuntimeError(f"a rollout group failed: {self._error!r}") from self._error
                self._next_consume += 1
                if i in self._dropped:
                    self._dropped.discard(i)
                    if self.deterministic:
                        self._walked_drops += 1
                        self._admit_cohort()
                else:
                    batch.append(self._ready.pop(i))
        self._handed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where to resume: the first group not yet consumed (every later one reruns)."""
        return {"next_index": self._next_consume, "stats": dict(self.stats)}
