"""LiveTasks: the group -> task order over a pool that grows while it is read."""

import pytest

from eigen_core.live_tasks import LiveTasks
from eigen_core.pool import PoolWriter, TaskPool
from synth.config import ProceduralConfig
from synth.procedural.shop import generate_shop_task

CFG = ProceduralConfig(test_fraction=0.0)


def _publish(root, indices):
    with PoolWriter(root, shard_size=4) as w:
        for i in indices:
            w.add(generate_shop_task(CFG, i))
    return [generate_shop_task(CFG, i).id for i in indices]


def test_a_pool_that_does_not_grow_plays_grains_epochs(tmp_path):
    _publish(tmp_path, range(10))
    live = LiveTasks(tmp_path, seed=3, refresh_every=4)
    old = TaskPool(tmp_path).dataset("train", seed=3).repeat()
    assert [live.task_id(i) for i in range(35)] == [old[i].id for i in range(35)]
    assert len(live) == 10


def test_published_tasks_go_first_at_the_next_refresh_and_nothing_repeats_or_is_skipped(tmp_path):
    _publish(tmp_path, range(10))
    live = LiveTasks(tmp_path, seed=0, refresh_every=5)
    before = [live.task_id(i) for i in range(7)]
    fresh = _publish(tmp_path, range(10, 14))
    assert [live.task_id(i) for i in range(7)] == before  # decided indices never change
    order = [live.task_id(i) for i in range(14)]
    assert order[:7] == before and set(order[10:14]) == set(fresh)  # at the refresh point 10
    assert sorted(order) == sorted(set(order)) and len(set(order)) == 14  # each task once
    assert set(order[14:] + [live.task_id(i) for i in range(14, 28)]) == set(order)  # then epochs over all 14
    assert live[11].id in fresh


def test_tasks_published_while_an_epoch_runs_come_next_when_it_ends(tmp_path):
    _publish(tmp_path, range(6))
    live = LiveTasks(tmp_path, seed=1)  # refresh_every 0: only where the order runs out
    first = [live.task_id(i) for i in range(6)]
    fresh = _publish(tmp_path, range(6, 9))
    assert {live.task_id(i) for i in range(6, 9)} == set(fresh)
    assert set(first) | set(fresh) == {live.task_id(i) for i in range(9, 18)}


def test_resumed_from_its_state_it_plays_the_same_tasks_and_refreshes_alike(tmp_path):
    _publish(tmp_path, range(8))
    a = LiveTasks(tmp_path, seed=2, refresh_every=3)
    _ = [a.task_id(i) for i in range(5)]
    _publish(tmp_path, range(8, 11))
    _ = [a.task_id(i) for i in range(9)]  # the refresh at 6 took the 3 new ones
    state = a.state_dict(consumed=4)
    assert all(s + len(ids) > 4 for s, ids in state["segments"])
    b = LiveTasks(tmp_path, seed=2, refresh_every=3)
    b.load_state_dict(state)
    assert [b.task_id(i) for i in range(4, 9)] == [a.task_id(i) for i in range(4, 9)]
    _publish(tmp_path, range(11, 13))  # more arrive after the resume: both see them alike
    assert [b.task_id(i) for i in range(9, 30)] == [a.task_id(i) for i in range(9, 30)]


def test_a_limit_caps_the_tasks_and_an_empty_split_is_named(tmp_path):
    _publish(tmp_path, range(6))
    live = LiveTasks(tmp_path, seed=0, refresh_every=2, limit=4)
    _publish(tmp_path, range(6, 9))
    assert len({live.task_id(i) for i in range(24)}) == 4
    with pytest.raises(ValueError, match="no 'test' tasks"):
        LiveTasks(tmp_path, "test")
