"""Staleness-bounded admission: eta = 0 is synchronous, eta > 0 runs ahead by at most eta versions."""

import asyncio
import random

import pytest

from rollout.controller import RolloutController, may_start
from rollout.version import PolicyVersion


def test_admission_rule_by_hand():
    # B = 4, eta = 0, version 0: groups 0..3 may start, the 5th may not.
    assert may_start(3, 0, 0, 4, 0) and not may_start(4, 0, 0, 4, 0)
    # A dropped group frees its slot.
    assert may_start(4, 1, 0, 4, 0)
    # eta = 2 at version 1: (1 + 2 + 1) * 4 = 16 groups.
    assert may_start(15, 0, 1, 4, 2) and not may_start(16, 0, 1, 4, 2)


def _train(eta, steps=5, b=3, keep=lambda g: True, concurrency=16, jitter=0.004, seed=0):
    """A fake learner: each group records the version it started at; the learner 'trains' (sleeps)
    then bumps the version. Returns [(update version, [group start versions])]."""
    rng = random.Random(seed)

    async def main():
        ctl = None

        async def run_group(index):
            started_at = ctl.version
            await asyncio.sleep(rng.random() * jitter)
            return {"index": index, "started_at": started_at}

        pv = PolicyVersion()  # the weight swap writes it; the controller reads it
        ctl = RolloutController(
            run_group, keep=keep, batch_groups=b, max_staleness=eta, concurrency=concurrency, version=pv
        )
        ctl.start()
        out = []
        for v in range(steps):
            batch = await ctl.next_batch()
            out.append((v, batch))
            await asyncio.sleep(0.01)  # the update
            pv.set(v + 1)
        state = ctl.state_dict()
        await ctl.stop()
        return out, state, ctl.stats

    return asyncio.run(main())


def test_eta_zero_is_synchronous():
    out, state, stats = _train(eta=0)
    for v, batch in out:
        assert [g["started_at"] for g in batch] == [v] * 3
        assert [g["index"] for g in batch] == sorted(g["index"] for g in batch)
    assert state["next_index"] == 15 and stats["started"] == 15  # nothing ran ahead


@pytest.mark.parametrize("eta", [1, 2])
def test_staleness_is_bounded_and_used(eta):
    out, _, stats = _train(eta=eta, steps=6)
    lags = [v - g["started_at"] for v, batch in out for g in batch]
    assert max(lags) <= eta and min(lags) >= 0
    assert max(lags) == eta  # a learner slower than rollouts lets the controller run ahead
    assert stats["started"] <= (6 + eta) * 3


def test_filtered_groups_free_their_slots():
    out, _, stats = _train(eta=0, keep=lambda g: g["index"] % 2 == 0)
    for v, batch in out:
        assert all(g["index"] % 2 == 0 and g["started_at"] == v for g in batch)
    assert stats["dropped"] >= 12 and stats["kept"] == 15


def test_a_failing_group_surfaces_in_next_batch():
    async def main():
        async def run_group(index):
            if index == 2:
                raise KeyError("task 2 is broken")
            return index

        ctl = RolloutController(run_group, keep=lambda g: True, batch_groups=4, max_staleness=0)
        ctl.start()
        try:
            with pytest.raises(RuntimeError, match="task 2 is broken"):
                await ctl.next_batch()
        finally:
            await ctl.stop()

    asyncio.run(main())


def test_resume_state_points_at_the_oldest_unconsumed_group():
    async def main():
        gate = asyncio.Event()

        async def run_group(index):
            if index == 4:
                await gate.wait()  # group 4 is still running when the state is saved
            return index

        pv = PolicyVersion()  # the weight swap writes it; the controller reads it
        ctl = RolloutController(
            run_group, keep=lambda g: True, batch_groups=2, max_staleness=2, concurrency=8, version=pv
        )
        ctl.start()
        assert await ctl.next_batch() == [0, 1]
        pv.set(1)
        assert await ctl.next_batch() == [2, 3]
        await asyncio.sleep(0.01)
        state = ctl.state_dict()
        await ctl.stop()
        return state

    assert asyncio.run(main())["next_index"] == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_groups"):
        RolloutController(lambda i: None, keep=bool, batch_groups=0)


@pytest.mark.parametrize("eta", [1, 2])
def test_a_straggler_is_waited_for_not_overtaken(eta):
    """Group 1 takes far longer than the rest: later groups finish first, but batches stay in
    start order, so the straggler's lag is still bounded by eta."""

    async def main():
        ctl = None

        async def run_group(index):
            started_at = ctl.version
            await asyncio.sleep(0.2 if index == 1 else 0.001)
            return {"index": index, "started_at": started_at}

        pv = PolicyVersion()  # the weight swap writes it; the controller reads it
        ctl = RolloutController(
            run_group, keep=lambda g: True, batch_groups=2, max_staleness=eta, concurrency=16, version=pv
        )
        ctl.start()
        out = []
        for v in range(5):
            out.append((v, await ctl.next_batch()))
            pv.set(v + 1)
        await ctl.stop()
        return out

    out = asyncio.run(main())
    assert [g["index"] for _, b in out for g in b] == list(range(10))
    assert max(v - g["started_at"] for v, b in out for g in b) <= eta


def test_one_policy_version_read_by_all_written_by_the_swap():
    """The process's PolicyVersion is the only holder: an HTTP engine's labels, the rollout
    client's requests and the controller all read the one object the weight swap writes."""
    from rollout.http_engine import HTTPEngine
    from rollout.remote import RemoteEpisodes

    pv = PolicyVersion(3)
    engine = HTTPEngine("http://127.0.0.1:9", "m", policy_version=pv)
    remote = RemoteEpisodes(["http://127.0.0.1:9"], policy_version=pv)
    ctl = RolloutController(lambda i: None, keep=bool, batch_groups=1, version=pv)
    seen = []
    unsubscribe = pv.on_change(seen.append)
    pv.set(7)
    assert engine.version == remote.policy_version.value == ctl.version == 7 and seen == [7]
    pv.raise_to(5)  # never backwards by an older announcement
    unsubscribe()
    pv.set(2)  # a resumed learner is the authority: it may set an older version
    assert engine.version == 2 and seen == [7]
