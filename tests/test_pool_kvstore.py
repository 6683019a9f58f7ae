"""The task pool on tensorstore key-value stores (``file://``, ``memory://``; ``gs://`` is the
same code against a bucket): shards written whole, the manifest replaced by compare-and-swap,
so writers on several hosts share one pool with nothing lost and nothing duplicated."""

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from eigen_core.pool import PoolError, PoolWriter, TaskPool
from eigen_core.storage import DirStore, KvStore, open_store

ROOT = Path(__file__).parents[1]


def _memory() -> str:
    return f"memory://pool-{uuid.uuid4().hex}/"


def _write(root: str, tasks, shard_size: int = 7) -> PoolWriter:
    with PoolWriter(root, shard_size=shard_size) as w:
        for t in tasks:
            w.add(t)
    return w


def test_locations_pick_their_store():
    assert isinstance(open_store("/tmp/x"), DirStore)
    assert isinstance(open_store("memory://a"), KvStore)
    assert open_store("memory://a").location == "memory://a/"
    assert open_store("memory://a") is open_store("memory://a/")  # one store per URL in a process
    with pytest.raises(OSError, match=r"nosuch://x/: cannot open the key-value store"):
        open_store("nosuch://x")


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_pool_on_a_kvstore_reads_as_one_on_disk(tmp_path, shop_tasks, kind):
    root = _memory() if kind == "memory" else f"file://{tmp_path}/pool"
    _write(root, shop_tasks)
    assert _write(root, shop_tasks).written == 0  # a restart publishes nothing twice
    pool = TaskPool(root)
    assert [t.id for t in pool.tasks()] == [t.id for t in shop_tasks]
    assert pool[5] == shop_tasks[5]
    ds = pool.dataset("train", seed=3)
    it = iter(ds.to_iter_dataset())
    first = [next(it).id for _ in range(4)]
    state = it.get_state()
    rest = [next(it).id for _ in range(3)]
    again = iter(TaskPool(root).dataset("train", seed=3).to_iter_dataset())
    again.set_state(state)
    assert [next(again).id for _ in range(3)] == rest and len(set(first + rest)) == 7
    if kind == "file":  # the layout is the directory pool's: a plain path opens it too
        assert [t.id for t in TaskPool(tmp_path / "pool").tasks()] == [t.id for t in shop_tasks]
    with pytest.raises(PoolError, match=r"memory://empty-\w+: no manifest.json"):
        TaskPool(f"memory://empty-{uuid.uuid4().hex}")


def test_writer_threads_racing_on_one_memory_pool_lose_and_duplicate_nothing(shop_tasks):
    root = _memory()
    errors = []

    def writer(part: int) -> None:
        try:
            with PoolWriter(root, shard_size=2) as w:
                for i, t in enumerate(shop_tasks):
                    if i % 4 != part:  # every task is added by three of the four writers
                        w.add(t)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    ids = [t.id for t in TaskPool(root).tasks()]
    assert sorted(ids) == sorted(t.id for t in shop_tasks) and len(ids) == len(set(ids))
    # every shard the manifest does not list was deleted by the writer that lost its race
    store = open_store(root)
    listed = {s["file"] for s in json.loads(store.read("manifest.json").data)["shards"]}
    assert set(store.keys("shards/")) == listed


def test_writer_processes_racing_on_one_file_kvstore_lose_and_duplicate_nothing(tmp_path, shop_tasks):
    src = tmp_path / "src"
    _write(str(src), shop_tasks)
    dst = f"file://{tmp_path}/dst"
    script = textwrap.dedent("""
        import sys
        from eigen_core.pool import PoolWriter, TaskPool
        src, dst, part = sys.argv[1], sys.argv[2], int(sys.argv[3])
        with PoolWriter(dst, shard_size=2) as w:
            for i, t in enumerate(TaskPool(src).tasks()):
                if i % 3 != part:  # every task is added by two of the three writers
                    w.add(t)
    """)
    cmd = [sys.executable, "-c", script, str(src), dst]
    procs = [subprocess.Popen([*cmd, str(k)], cwd=ROOT, stderr=subprocess.PIPE) for k in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    ids = [t.id for t in TaskPool(dst).tasks()]
    assert sorted(ids) == sorted(t.id for t in shop_tasks) and len(ids) == len(set(ids))


def test_damage_on_a_kvstore_is_quarantined_and_a_damaged_manifest_rebuilt(shop_tasks):
    root = _memory()
    _write(root, shop_tasks[:20], shard_size=5)
    store = open_store(root)
    shards = json.loads(store.read("manifest.json").data)["shards"]
    victim = shards[1]["file"]
    store.write(victim, store.read(victim).data[:-10])  # truncated
    pool = TaskPool(root)
    assert [q["file"] for q in pool.quarantined] == [victim]
    assert [t.id for t in pool.tasks()] == [t.id for t in shop_tasks[:20] if t.id not in shards[1]["ids"]]
    assert store.read(victim).data is None
    assert store.read("quarantine/" + victim.split("/")[1]).data is not None
    # a manifest torn in two: the previous one plus the shard written after it
    _write(root, shop_tasks[20:25], shard_size=5)
    store.write("manifest.json", store.read("manifest.json").data[:50])
    again = TaskPool(root)
    want = [t.id for t in shop_tasks[:25] if t.id not in shards[1]["ids"]]
    assert [t.id for t in again.tasks()] == want
    assert json.loads(store.read("manifest.json").data)["sha256"]  # the repair was written back
