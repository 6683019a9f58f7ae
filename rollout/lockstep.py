"""Lockstep cohorts: engine batches whose make-up does not depend on timing.

An embedded engine batches whatever requests are queued when it cuts a batch, so which requests
share a batch (and so the padded shapes, and the last bits of every logprob: XLA's kernels are
not batch-invariant) depends on timing, as does which weights serve an episode that spans a
weight swap. That makes asynchronous RL irreproducible even with every request seeded.

A ``Cohort`` is a fixed set of episodes (``members``) started together under one pinned policy
version. Its members' requests are held until every live member is waiting on an engine, then
each engine runs the cohort's requests as one batch (rows in member order) with the pinned
version's weights and the cohort's own prefix cache. Between ticks a member runs only its own
deterministic code (tools, parsing, scoring), so every batch is a function of the cohort alone:
cohorts overlap one another and the learner, yet each produces the same tokens and logprobs,
bit for bit, whatever the timing. ``rollout.controller``'s deterministic mode admits cohorts.

An engine takes part by checking ``current_cohort`` in ``generate`` and implementing
``LockstepEngine``; requests made outside any cohort are served as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

from rollout.engine import Generation, SamplingParams
from rollout.version import PolicyVersion

T = TypeVar("T")
Request = tuple[Hashable, list[int], SamplingParams, "asyncio.Future[Generation]"]  # (member, prompt, ...)


class CohortStore(Protocol):
    """A cohort's prefix cache, as the cohort sees it."""

    def scale(self, fraction: float) -> None:
        """Hold at most ``fraction`` of the budget it was made with (evicting what is over)."""
        ...


class LockstepEngine(Protocol):
    """An engine that can serve a cohort's batch."""

    policy_version: PolicyVersion
    """Whose version a cohort's pin refers to (engines of other policies serve their current weights)."""

    def new_prefix_store(self, share: float = 1.0) -> CohortStore | None:
        """A fresh, empty prefix cache for one cohort with ``share`` of the engine's budget
        (None: the engine keeps none, or the share is too small to hold anything)."""
        ...

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sequence[SamplingParams],
        *,
        version: int | None = None,
        prefix_store: Any | None = None,
    ) -> list[Generation]:
        """Complete every prompt with the weights of ``version`` (None: the current ones)."""
        ...


current_cohort: contextvars.ContextVar[Cohort | None] = contextvars.ContextVar("cohort", default=None)
_member_key: contextvars.ContextVar[Hashable] = contextvars.ContextVar("cohort_member", default=0)


class Cohort:
    """``members`` episodes stepped together (see the module docstring).

    Args:
        members: how many episodes belong to the cohort; each must run inside ``member`` (its
            exit is how the cohort learns a member will make no more requests).
        policy: the policy version holder the pin refers to, and ``version`` the pinned version:
            engines whose ``policy_version`` is ``policy`` serve that version's weights.
    """

    def __init__(
        self,
        members: int,
        policy: PolicyVersion | None = None,
        version: int | None = None,
        cache_share: float = 1.0,
    ):
        """``cache_share``: the fraction of each engine's prefix-cache budget the cohort's store
        starts with; it shrinks with the members still live, so cohorts whose shares add up to at
        most 1 over the episodes in flight hold at most one budget together (the controller's)."""
        if members < 1:
            raise ValueError(f"a cohort needs at least one member, got {members}")
        self.members = self.live = members
        self.cache_share = cache_share
        self.policy, self.version = policy, version
        self._pending: dict[int, tuple[LockstepEngine, list[Request]]] = {}  # by id(engine)
        self._stores: dict[int, CohortStore | None] = {}
        self._batches: set[asyncio.Task] = set()
        self.ticks = 0

    async def submit(self, engine: LockstepEngine, prompt: list[int], sampling: SamplingParams) -> Generation:
        """Queue one member's request; it runs in the cohort's next batch on ``engine``."""
        fut = asyncio.get_running_loop().create_future()
        queue = self._pending.setdefault(id(engine), (engine, []))[1]
        queue.append((_member_key.get(), prompt, sampling, fut))
        self._maybe_tick()
        return await fut

    def leave(self) -> None:
        """A member ended (its remaining members may now be the only ones left to wait for).
        Between two ticks, so the stores shrink at the same point of the cohort's run whatever
        the timing."""
        self.live -= 1
        for store in self._stores.values():
            if store is not None:
                store.scale(self.live / self.members)
        self._maybe_tick()

    def _maybe_tick(self) -> None:
        waiting = sum(len(reqs) for _, reqs in self._pending.values())
        if not waiting or waiting < self.live:
            return
        batches, self._pending = self._pending, {}
        self.ticks += 1
        for key, (engine, reqs) in batches.items():
            reqs.sort(key=lambda r: r[0])  # member order, not arrival order
            task = asyncio.get_running_loop().create_task(self._run(key, engine, reqs))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run(self, key: int, engine: LockstepEngine, reqs: list[Request]) -> None:
        pinned = self.version if self.policy is not None and engine.policy_version is self.policy else None
        if key not in self._stores:
            store = engine.new_prefix_store(self.cache_share)
            if store is not None:
                store.scale(self.live / self.members)
            self._stores[key] = store
        try:
            gens = await asyncio.to_thread(
                engine.generate_batch,
                [r[1] for r in reqs],
                [r[2] for r in reqs],
                version=pinned,
                prefix_store=self._stores[key],
            )
        except Exception as e:  # every member waiting on this batch sees the failure
            for *_, fut in reqs:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (*_, fut), gen in zip(reqs, gens, strict=True):
            if not fut.done():
                fut.set_result(gen)


async def member(key: Hashable, run: Callable[[], Awaitable[T]]) -> T:
    """Run one episode (``run()``) as the member ``key`` of the current cohort (rows of a batch
    are ordered by key); outside a cohort, just ``run()``."""
    cohort = current_cohort.get()
    if cohort is None:
        return await run()
    token = _member_key.set(key)
    try:
        return await run()
    finally:
        _member_key.reset(token)
        cohort.leave()


def in_cohort(cohort: Cohort) -> contextvars.Context:
    """A copy of the current context in which ``cohort`` is current (for one ``create_task``:
    tasks must not share a context, or they share their member keys)."""
    ctx = contextvars.copy_context()
    ctx.run(current_cohort.set, cohort)
    return ctx
