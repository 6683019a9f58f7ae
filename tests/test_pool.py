import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from eigen_core.pool import PoolError, PoolWriter, TaskPool


def _write(root, tasks, shard_size=7):
    with PoolWriter(root, shard_size=shard_size) as w:
        for t in tasks:
            w.add(t)
    return w


def test_round_trip_splits_and_random_access(tmp_path, shop_tasks):
    _write(tmp_path, shop_tasks)
    pool = TaskPool(tmp_path)
    assert len(pool) == len(shop_tasks)
    assert [pool[i] for i in range(len(pool))] == shop_tasks
    want = {}
    for t in shop_tasks:
        want[t.split] = want.get(t.split, 0) + 1
    assert pool.splits() == want
    assert [t.id for t in pool.tasks("test")] == [t.id for t in shop_tasks if t.split == "test"]
    shards = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    assert len(shards) == -(-len(shop_tasks) // 7)


def test_restarted_writer_skips_existing_ids(tmp_path, shop_tasks):
    _write(tmp_path, shop_tasks[:25])
    w = _write(tmp_path, shop_tasks)  # a restart that regenerates everything
    assert w.written == len(shop_tasks) - 25
    assert [t.id for t in TaskPool(tmp_path).tasks()] == [t.id for t in shop_tasks]


def test_writer_killed_mid_shard_leaves_nothing_visible(tmp_path, shop_tasks):
    _write(tmp_path, shop_tasks[:10], shard_size=10)
    src = tmp_path.parent / (tmp_path.name + "_src")
    _write(src, shop_tasks[10:20], shard_size=10)
    # A writer that dies (SIGKILL) after writing its shard but before publishing it in the
    # manifest, leaving a half-written temp file behind as well.
    script = textwrap.dedent(f"""
        import os, signal
        import eigen_core.storage as p
        from eigen_core.pool import PoolWriter, TaskPool
        real = p.atomic_write
        def dying(path, data):
            if path.name == "manifest.json":
                os.kill(os.getpid(), signal.SIGKILL)
            with open(path.with_name(".tmp-partial-" + path.name), "wb") as f:
                f.write(data[: len(data) // 2])
            real(path, data)
        p.atomic_write = dying
        w = PoolWriter({str(tmp_path)!r}, shard_size=100)
        for t in TaskPool({str(src)!r}).tasks():
            w.add(t)
        w.flush()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    files = os.listdir(tmp_path / "shards")
    assert len([f for f in files if f.endswith(".jsonl") and not f.startswith(".")]) == 2  # one orphan
    pool = TaskPool(tmp_path)
    assert [t.id for t in pool.tasks()] == [t.id for t in shop_tasks[:10]]


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path, shop_tasks):
    src = tmp_path / "src"
    _write(src, shop_tasks)
    dst = tmp_path / "dst"
    script = textwrap.dedent("""
        import sys
        from eigen_core.pool import PoolWriter, TaskPool
        src, dst, part = sys.argv[1], sys.argv[2], int(sys.argv[3])
        with PoolWriter(dst, shard_size=3) as w:
            for i, t in enumerate(TaskPool(src).tasks()):
                if i % 3 != part:  # every task is added by one or both writers
                    w.add(t)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(src), str(dst), str(k)]) for k in (0, 1)]
    assert all(p.wait() == 0 for p in procs)
    assert sorted(t.id for t in TaskPool(dst).tasks()) == sorted(t.id for t in shop_tasks)  # once each


def test_corruption_and_missing_pool_are_named(tmp_path, shop_tasks):
    with pytest.raises(PoolError, match=r"no manifest\.json"):
        TaskPool(tmp_path / "nope")
    _write(tmp_path, shop_tasks[:3])
    shard = next((tmp_path / "shards").glob("*.jsonl"))
    shard.write_text(shard.read_text().replace("shop", "shoq", 1))
    pool = TaskPool(tmp_path)  # the damaged shard is set aside, with its reason
    assert len(pool) == 0 and "sha256" in pool.quarantined[0]["reason"]
    (tmp_path / "manifest.json").write_text("{not json")
    os.remove(tmp_path / "manifest.prev.json")  # nothing to rebuild from: the error names the file
    with pytest.raises(PoolError, match=r"manifest.json: not valid JSON \(line 1"):
        TaskPool(tmp_path)


def _corrupt(path, how, at):
    data = path.read_bytes()
    k = at % max(len(data), 1)
    if how == "truncate":
        path.write_bytes(data[:k])
    elif how == "flip":
        path.write_bytes(data[:k] + bytes([data[k] ^ (1 << (at % 8))]) + data[k + 1 :])
    elif how == "foreign":
        path.write_bytes(b'{"not": "a task"}\n' * 2)
    elif how == "delete":
        path.unlink()


@fuzz(40)
@given(
    victims=st.sets(st.integers(0, 5), min_size=1, max_size=3),
    how=st.sampled_from(["truncate", "flip", "foreign", "delete"]),
    at=st.integers(0, 10**6),
)
def test_damaged_shards_are_quarantined_and_the_rest_reads(tmp_path_factory, shop_tasks, victims, how, at):
    root = tmp_path_factory.mktemp("pool")
    _write(root, shop_tasks[:36], shard_size=6)  # six shards
    shards = json.loads((root / "manifest.json").read_text())["shards"]
    for v in victims:
        _corrupt(root / shards[v]["file"], how, at + v)
    pool = TaskPool(root)
    lost = {i for v in victims for i in shards[v]["ids"]}
    assert sorted(q["file"] for q in pool.quarantined) == sorted(shards[v]["file"] for v in victims)
    assert {i for q in pool.quarantined for i in q["ids"]} == lost
    assert [t.id for t in pool.tasks()] == [t.id for t in shop_tasks[:36] if t.id not in lost]
    assert [t for t in pool.tasks()] == [t for t in shop_tasks[:36] if t.id not in lost]
    if how != "delete":
        assert {p.name for p in (root / "quarantine").iterdir()} == {
            shards[v]["file"].split("/")[1] for v in victims
        }
    # Recorded once: a second reader sees the same pool and the same quarantine list.
    again = TaskPool(root)
    assert len(again) == len(pool) and again.quarantined == pool.quarantined
    with PoolWriter(root) as w:  # writers still append, and the lost ids can be published again
        w.add(shop_tasks[sorted(victims)[0] * 6])
    assert len(TaskPool(root)) == len(pool) + 1


@fuzz(30)
@given(how=st.sampled_from(["truncate", "flip", "foreign", "garbage"]), at=st.integers(0, 10**6))
def test_a_damaged_manifest_is_rebuilt_from_the_previous_one(tmp_path_factory, shop_tasks, how, at):
    root = tmp_path_factory.mktemp("pool")
    _write(root, shop_tasks[:20], shard_size=5)  # four flushes: manifest.prev.json is the third
    manifest = root / "manifest.json"
    if how == "garbage":
        manifest.write_bytes(bytes(range(256)))
    else:
        _corrupt(manifest, how, at)
    # Any damage either fails to parse or fails the manifest's own checksum (a flip that only
    # renames its "sha256" key leaves an unchecked but intact list): nothing is lost.
    pool = TaskPool(root)  # the previous manifest + the shard file written after it
    assert [t.id for t in pool.tasks()] == [t.id for t in shop_tasks[:20]]
    assert "sha256" in json.loads(manifest.read_text())  # the repair was written back


def test_grain_dataset_is_deterministic_and_checkpointable(tmp_path, shop_tasks):
    _write(tmp_path, shop_tasks)
    pool = TaskPool(tmp_path)
    order = [t.id for t in pool.dataset("train", seed=3)]
    assert order == [t.id for t in TaskPool(tmp_path).dataset("train", seed=3)]
    assert order != [t.id for t in pool.dataset("train", seed=4)]
    assert sorted(order) == sorted(t.id for t in shop_tasks if t.split == "train")

    it = iter(pool.dataset("train", seed=3, num_epochs=None).to_iter_dataset())
    head = [next(it).id for _ in range(5)]
    state = it.get_state()
    rest = [next(it).id for _ in range(40)]  # crosses an epoch boundary
    fresh = iter(TaskPool(tmp_path).dataset("train", seed=3, num_epochs=None).to_iter_dataset())
    fresh.set_state(state)
    assert [next(fresh).id for _ in range(40)] == rest
    assert head == order[:5]


def test_grain_dataset_reshuffles_each_epoch_and_limits_before_shuffling(tmp_path, shop_tasks):
    """What GRPO reads (group i plays ``ds[i]``): every epoch a permutation of the same tasks, a
    new one each epoch; ``limit`` keeps the split's first N, whatever the seed."""
    _write(tmp_path, shop_tasks)
    pool = TaskPool(tmp_path)
    train = [t.id for t in shop_tasks if t.split == "train"]
    ds = pool.dataset("train", seed=0, limit=5).repeat()
    epochs = [[ds[e * 5 + i].id for i in range(5)] for e in range(3)]
    assert all(sorted(e) == sorted(train[:5]) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    assert [t.id for t in pool.dataset("train", seed=1, limit=5, shuffle=False)] == train[:5]


def test_data_source_pickles_without_tasks(tmp_path, shop_tasks):
    _write(tmp_path, shop_tasks)
    src = TaskPool(tmp_path).data_source("train")
    clone = pickle.loads(pickle.dumps(src))
    assert len(clone) == len(src) and clone[3] == src[3]
    assert len(pickle.dumps(src)) < 4000


def test_writers_opened_together_publish_each_id_once(tmp_path, shop_tasks):
    a, b = PoolWriter(tmp_path, shard_size=100), PoolWriter(tmp_path, shard_size=100)
    for t in shop_tasks[:20]:
        a.add(t)
    for t in shop_tasks[10:30]:
        b.add(t)
    a.flush()
    b.flush()
    assert (a.written, b.written) == (20, 10)
    assert [t.id for t in TaskPool(tmp_path).tasks()] == [t.id for t in shop_tasks[:30]]
    assert not b.add(shop_tasks[0])  # now known to b as published
