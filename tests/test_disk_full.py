"""A full disk or a read-only output directory: a clear error naming the path, and nothing left
half-written (no temp file, no unpublished shard, no uncommitted checkpoint)."""

import os
import subprocess

import pytest

from eigen_core.pool import PoolError, PoolWriter, TaskPool


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KiB tmpfs: a real ENOSPC (and EROFS once remounted read-only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI and this machine run as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_the_pool_whole_and_the_tasks_queued(small_disk, shop_tasks):
    root = small_disk / "pool"
    big = [t.model_copy(update={"scenario": t.scenario.model_copy(update={"instructions": "x" * 20000})})
           for t in shop_tasks]  # fmt: skip
    w = PoolWriter(root, shard_size=2)
    published = 0
    with pytest.raises(
        PoolError, match=rf"{root}: cannot write to the task pool \(No space left on device\)"
    ):
        for t in big:
            w.add(t)
            published = w.written
    queued = len(w._buffer)
    assert queued == 2  # the shard that did not fit is still in the writer, not lost
    pool = TaskPool(root)
    assert len(pool) == published and not pool.quarantined  # what was published reads whole
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]  # no temp file left
    listed = {s["file"] for s in pool._shards}
    assert {f"shards/{p.name}" for p in (root / "shards").iterdir()} == listed  # no orphan shard


def test_a_read_only_pool_directory_is_named(small_disk, shop_tasks):
    root = small_disk / "pool"
    with PoolWriter(root) as w:
        w.add(shop_tasks[0])
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    w = PoolWriter(root)
    w.add(shop_tasks[1])
    with pytest.raises(PoolError, match=rf"{root}: cannot write to the task pool \(Read-only file system\)"):
        w.flush()
    assert [t.id for t in TaskPool(root).tasks()] == [shop_tasks[0].id]


def test_a_checkpoint_that_does_not_fit_is_named_and_the_last_one_stays(small_disk, tmp_path):
    import jax
    import jax.numpy as jnp

    from eigen_jax.checkpoint import Checkpointer, CheckpointError
    from eigen_jax.learner import TrainState

    def state(step, n):
        return TrainState(
            params={"w": jax.random.normal(jax.random.key(step), (n,))},
            opt_state={},
            step=jnp.asarray(step),
            rng=jnp.zeros(2, jnp.uint32),
        )

    ck = Checkpointer(small_disk / "ckpt", keep=3)
    ck.save(state(1, 1000), {"data": 1})  # ~4 KB: fits
    with pytest.raises(
        CheckpointError, match=rf"step 2 under {small_disk / 'ckpt'}.*latest complete checkpoint is step 1"
    ):
        ck.save(state(2, 200_000), {"data": 2})  # ~800 KB of noise: does not
    restored, meta = ck.restore(state(0, 1000))
    assert int(restored.step) == 1 and meta == {"data": 1}
