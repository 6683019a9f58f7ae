"""The task pool: append-only JSONL shards plus a manifest, in a directory or a bucket.

Layout (keys of a ``PoolStore``: a directory, or a tensorstore kvstore such as ``gs://b/pool``)::

    manifest.json          {"format", "shards": [{"file", "sha256", "ids", "splits"}],
                            "sha256" (of the shard list), "quarantined": [...]}
    manifest.prev.json     the manifest before the last change (for repair)
    shards/<t>-<id>.jsonl  one Task per line; <t> (hex nanoseconds) orders them by write time
    quarantine/            shards that failed their checksum, moved aside
    snapshots/             DB snapshots tasks start from, stored once (``eigen_core.snapshots``)

Atomicity: a shard is written whole, and only then added to the manifest, which is replaced by
a compare-and-swap on its generation: a writer that lost the race to another re-reads the
manifest, drops the ids the other published and tries again. No lock spans hosts, so several
synth hosts and the learner share one pool in a bucket. Readers see only shards the manifest
lists, so a writer killed at any point leaves no partial shard visible. The manifest keeps each
task's id and split, so a split's index is built without parsing shards; shards are parsed lazily.

Damage is contained, not fatal: opening a pool checks every listed shard against its sha256 and
line count; a truncated, bit-flipped, replaced or missing shard is moved to ``quarantine/``, taken
out of the manifest (recorded under ``quarantined`` with the reason and its task ids), logged,
and the rest of the pool reads as before. A manifest that is not valid JSON or fails its own
checksum is rebuilt from ``manifest.prev.json`` plus the shard files written after it.

This lives in ``eigen_core`` (not ``synth``) because verifiers and the learner read pools and must
not import ``synth``; ``synth`` is the main writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from eigen_core import snapshots
from eigen_core.contracts import Task
from eigen_core.crashpoints import crash_point
from eigen_core.storage import Blob, PoolStore, open_store

Record = Any
"""What a pool holds: pydantic records with ``id`` and ``split`` (``Task``; ``Dialogue`` in a
dialogue pool, ``eigen_core.dialogues``)."""

FORMAT = "eigen-task-pool/1"
MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
QUARANTINE = "quarantine"
MAX_SWAPS = 1000
"""Manifest updates a writer attempts before giving up (each lost race means another writer
published, so this bounds only pathological contention)."""
log = logging.getLogger(__name__)


class PoolError(Exception):
    """A pool that cannot be read as a task pool (names the object and the problem)."""


def _shards_digest(shards: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def _parse_manifest(name: str, data: bytes) -> dict[str, Any]:
    """One manifest's bytes, checked; raises PoolError naming ``name`` and the problem."""
    try:
        manifest = json.loads(data.decode())
    except json.JSONDecodeError as e:
        raise PoolError(f"{name}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise PoolError(f"{name}: not UTF-8 text ({e.reason})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PoolError(f"{name}: format {got!r}, expected {FORMAT!r}")
    shards = manifest.get("shards")
    ok = isinstance(shards, list) and all(
        isinstance(sh, dict)
        and isinstance(sh.get("file"), str)
        and isinstance(sh.get("sha256"), str)
        and isinstance(sh.get("ids"), list)
        and isinstance(sh.get("splits"), list)
        and len(sh["ids"]) == len(sh["splits"])
        for sh in shards
    )
    if not ok:
        raise PoolError(f"{name}: 'shards' must list objects with file, sha256, ids and splits")
    if "sha256" in manifest and manifest["sha256"] != _shards_digest(shards):
        raise PoolError(f"{name}: the shard list does not match the manifest's own sha256 (corrupted)")
    return manifest


def _read_manifest(store: PoolStore, record: type[Record] = Task) -> tuple[dict[str, Any], Blob]:
    """The manifest (repaired from the previous one if damaged) and the current object as read,
    whose generation a change must swap against."""
    blob = store.read(MANIFEST)
    if blob.data is None:
        return {"format": FORMAT, "shards": []}, blob
    try:
        return _parse_manifest(store.name(MANIFEST), blob.data), blob
    except PoolError as e:
        damaged = e
    prev = store.read(PREVIOUS)
    if prev.data is None:
        raise damaged
    try:
        manifest = _parse_manifest(store.name(PREVIOUS), prev.data)
    except PoolError:
        raise damaged from None
    return _adopt_orphans(store, manifest, f"rebuilt from {PREVIOUS} ({damaged})", record), blob


def _adopt_orphans(
    store: PoolStore, manifest: dict[str, Any], why: str, record: type[Record]
) -> dict[str, Any]:
    """``manifest`` plus the intact shards it does not list (oldest first, new ids only)."""
    listed = {sh["file"] for sh in manifest["shards"]} | {q["file"] for q in manifest.get("quarantined", [])}
    ids = {i for sh in manifest["shards"] for i in sh["ids"]}
    for key in store.keys("shards/"):  # names start with their write time: oldest first
        if key in listed or not key.endswith(".jsonl"):
            continue
        data = store.read(key).data or b""
        try:
            tasks = [record.model_validate_json(line) for line in data.decode().splitlines()]
        except (ValueError, UnicodeDecodeError):
            continue  # not a shard we can vouch for: leave it where it is
        fresh = [t for t in tasks if t.id not in ids]
        if fresh and len(fresh) == len(tasks):
            ids.update(t.id for t in tasks)
            manifest["shards"].append(_entry(key, data, tasks))
    manifest["repaired"] = why
    log.warning("task pool %s: manifest %s", store.location, why)
    return manifest


def _entry(key: str, data: bytes, tasks: list[Record]) -> dict[str, Any]:
    return {"file": key, "sha256": hashlib.sha256(data).hexdigest(),
            "ids": [t.id for t in tasks], "splits": [t.split for t in tasks]}  # fmt: skip


def _commit(store: PoolStore, manifest: dict[str, Any], read: Blob) -> bool:
    """Replace the manifest ``read`` by ``manifest`` if no one changed it since (False if someone
    did), keeping a sound replaced manifest as ``manifest.prev.json``."""
    manifest = {k: v for k, v in manifest.items() if k != "repaired"}
    manifest["sha256"] = _shards_digest(manifest["shards"])
    if read.data is not None:
        try:
            _parse_manifest(MANIFEST, read.data)  # only a sound manifest becomes the fallback
            store.write(PREVIOUS, read.data)
        except PoolError:
            pass
    return store.swap(MANIFEST, json.dumps(manifest).encode(), read.generation)


def _backoff(attempt: int) -> None:
    """A short random pause after a lost race, so racing writers spread out."""
    time.sleep(random.uniform(0, 0.002 * min(attempt, 50)))


def _shard_problem(store: PoolStore, shard: dict[str, Any]) -> str | None:
    """Why a listed shard cannot be trusted (None: its bytes are what the manifest recorded)."""
    try:
        data = store.read(shard["file"]).data
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if data is None:
        return "missing"
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        return "sha256 does not match the manifest (truncated or corrupted)"
    lines = data.count(b"\n")
    if lines != len(shard["ids"]):
        return f"{lines} lines for {len(shard['ids'])} tasks"
    return None


def _shard_key() -> str:
    return f"shards/{time.time_ns():016x}-{uuid.uuid4().hex[:16]}.jsonl"


class PoolWriter:
    """Appends tasks to a pool in shards of ``shard_size``. Use as a context manager (flushes).

    Ids are unique in a pool: ``add`` skips ids already published or queued, and ``flush`` drops
    ids that another writer published meanwhile (its manifest swap fails if one did; it re-reads
    and retries). So a generator that was killed and restarted with the same seed, or writers on
    several hosts racing on the same tasks, neither duplicate nor lose tasks.
    """

    record: type[Record] = Task
    """What this pool holds (a subclass for another record type changes only this)."""

    def __init__(self, root: str | os.PathLike[str], shard_size: int = 256):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.root = os.fspath(root)
        self.store = open_store(self.root)
        self.shard_size = shard_size
        self._published: set[str] = set()
        self._refresh(_read_manifest(self.store, self.record)[0])
        self._buffer: dict[str, Task] = {}
        self.written = 0
        """Tasks this writer has published."""

    def _refresh(self, manifest: dict[str, Any]) -> None:
        # recomputed, not accumulated: ids of quarantined shards may be published again
        self._published = {i for shard in manifest["shards"] for i in shard["ids"]}

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._published or task_id in self._buffer

    def add(self, task: Task) -> bool:
        """Queue a task; returns False (and drops it) if its id is already in the pool."""
        if task.id in self:
            return False
        self._buffer[task.id] = task
        if len(self._buffer) >= self.shard_size:
            self.flush()
        return True

    def flush(self) -> None:
        """Write buffered tasks as one shard and publish it in the manifest."""
        if not self._buffer:
            return
        try:
            self._publish()
        except OSError as e:  # disk full, read-only, gone: nothing published, nothing dropped
            raise PoolError(
                f"{self.root}: cannot write to the task pool ({e.strerror or e}); "
                f"{len(self._buffer)} tasks stay queued in this writer and nothing was published"
            ) from e

    def _publish(self) -> None:
        key: str | None = None
        ids: list[str] = []
        try:
            for attempt in range(MAX_SWAPS):
                manifest, read = _read_manifest(self.store, self.record)
                self._refresh(manifest)
                tasks = [t for i, t in self._buffer.items() if i not in self._published]
                if not tasks:
                    break  # another writer published every one of them
                if (now := [t.id for t in tasks]) != ids:  # first try, or others published some
                    if key is not None:
                        self.store.delete(key)
                    data = "".join(t.model_dump_json() + "\n" for t in tasks).encode()
                    key, ids = _shard_key(), now
                    self.store.write(key, data)
                    crash_point("pool.before_publish")  # the shard is written, the manifest knows nothing
                    entry = _entry(key, data, tasks)
                manifest["shards"].append(entry)
                if _commit(self.store, manifest, read):
                    self._refresh(manifest)
                    self.written += len(tasks)
                    key = None  # published: it stays
                    break
                _backoff(attempt)
            else:
                raise PoolError(f"{self.root}: the manifest changed under {MAX_SWAPS} tries in a row")
        finally:
            if key is not None:  # never published: leave no orphan behind
                try:
                    self.store.delete(key)
                except OSError:
                    pass
        self._buffer = {}

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # Flush on clean exit and on errors alike: accepted tasks are never lost.
        self.flush()


def _quarantine(where: str, manifest: dict[str, Any], bad: dict[str, str]) -> dict[str, Any]:
    """``manifest`` without the ``bad`` shards, which it records under ``quarantined``."""
    keep, out = [], list(manifest.get("quarantined", []))
    for sh in manifest["shards"]:
        if sh["file"] not in bad:
            keep.append(sh)
            continue
        out.append({**sh, "reason": bad[sh["file"]], "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log.warning(
            "task pool %s: quarantined %s (%s): %d tasks excluded",
            where, sh["file"], bad[sh["file"]], len(sh["ids"]),
        )  # fmt: skip
    return {**manifest, "shards": keep, "quarantined": out}


class TaskPool:
    """Read access to a pool: ``len``, ids, splits, random access, iteration, grain datasets.

    Opening checks every shard (see the module docstring); ``quarantined`` lists the shards set
    aside, now and before, each with its reason and task ids."""

    record: type[Record] = Task
    """What this pool holds (a subclass for another record type changes only this)."""

    def __init__(self, root: str | os.PathLike[str], *, _shards: list[dict[str, Any]] | None = None):
        self.root = os.fspath(root)
        self.store = open_store(self.root)
        snapshots.register(self.store)  # the DB snapshots its tasks start from resolve here
        if _shards is None:  # a worker reopening a pool it was handed keeps that pool's shards
            manifest, read = _read_manifest(self.store, self.record)
            if read.data is None:
                hint = "create one with synth.procedural"
                raise PoolError(f"{self.root}: no {MANIFEST}; not a task pool ({hint})")
            manifest = self._checked(manifest)
            _shards = manifest["shards"]
            self.quarantined: list[dict[str, Any]] = manifest.get("quarantined", [])
        else:
            self.quarantined = []
        self._shards = _shards
        self._index = [(s, i) for s, shard in enumerate(self._shards) for i in range(len(shard["ids"]))]
        self._load_shard = lru_cache(maxsize=64)(self._parse_shard)

    def _checked(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Quarantine damaged shards (and save a repaired manifest) when this process may write."""
        bad = self._problems(manifest)
        if not bad and "repaired" not in manifest:
            return manifest
        try:
            for attempt in range(MAX_SWAPS):
                # another process may have acted meanwhile
                current, read = _read_manifest(self.store, self.record)
                bad = self._problems(current)
                fixed = _quarantine(self.root, current, bad)
                if _commit(self.store, fixed, read):
                    for key in bad:  # set aside once no manifest lists them
                        self.store.move(key, f"{QUARANTINE}/{key.rpartition('/')[2]}")
                    return fixed
                _backoff(attempt)
            raise PoolError(f"{self.root}: the manifest changed under {MAX_SWAPS} tries in a row")
        except OSError as e:  # a read-only pool: leave the files, exclude in memory
            log.warning("task pool %s: cannot record the quarantine (%s); excluding in memory", self.root, e)
            return _quarantine(self.root, manifest, bad)

    def _problems(self, manifest: dict[str, Any]) -> dict[str, str]:
        return {sh["file"]: why for sh in manifest["shards"] if (why := _shard_problem(self.store, sh))}

    def __len__(self) -> int:
        return len(self._index)

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self._shards:
            for sp in shard["splits"]:
                counts[sp] = counts.get(sp, 0) + 1
        return counts

    @classmethod
    def listing(cls, root: str | os.PathLike[str]) -> str:
        """A digest of the shards the pool at ``root`` lists now: it changes when a writer
        publishes (reads the manifest only; opening a ``TaskPool`` checks every shard)."""
        return _shards_digest(_read_manifest(open_store(os.fspath(root)), cls.record)[0]["shards"])

    def ids(self, split: str | None = None) -> list[str]:
        """Task ids of ``split`` (all if None), in pool order (the order tasks were published)."""
        return [
            self._shards[s]["ids"][i]
            for s, i in self._index
            if split is None or self._shards[s]["splits"][i] == split
        ]

    def positions(self, split: str | None = None) -> list[int]:
        """Global positions of the tasks in ``split`` (all if None), in pool order."""
        return [
            n
            for n, (s, i) in enumerate(self._index)
            if split is None or self._shards[s]["splits"][i] == split
        ]

    def _parse_shard(self, s: int) -> list[Task]:
        shard = self._shards[s]
        path = self.store.name(shard["file"])
        data = self.store.read(shard["file"]).data
        if data is None:
            raise PoolError(f"{path}: missing (listed in the manifest)")
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise PoolError(f"{path}: sha256 does not match the manifest (corrupted shard)")
        tasks = []
        for lineno, line in enumerate(data.decode().splitlines(), 1):
            try:
                tasks.append(self.record.model_validate_json(line))
            except ValueError as e:
                raise PoolError(f"{path}:{lineno}: invalid {self.record.__name__}: {e}") from None
        return tasks

    def __getitem__(self, n: int) -> Task:
        s, i = self._index[n]
        return self._load_shard(s)[i]

    def tasks(self, split: str | None = None, domain: str | None = None) -> Iterator[Task]:
        """The records of ``split`` (all if None), in pool order; only ``domain``'s if given."""
        for n in self.positions(split):
            item = self[n]
            if domain is None or item.domain == domain:
                yield item

    def data_source(self, split: str | None = None) -> TaskDataSource:
        return TaskDataSource(self, split)

    def dataset(
        self,
        split: str | None = None,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = 1,
        limit: int | None = None,
    ):
        """A ``grain.MapDataset`` of tasks: the split's first ``limit`` (None: all), shuffled from
        ``seed``, a fresh permutation each epoch. Random access (``ds[i]``: a pure function of
        ``seed`` and ``i``) or ``num_epochs=None`` to repeat forever; ``iter(ds.to_iter_dataset())``
        gives an iterator whose ``get_state()`` / ``set_state()`` checkpoint the exact position.
        """
        import grain  # lazy: grain is heavy and only readers that want it pay for it

        ds = grain.MapDataset.source(self.data_source(split))
        if limit is not None:
            ds = ds[:limit]
        if shuffle:
            ds = ds.shuffle(seed=seed)
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        return ds


class TaskDataSource:
    """grain ``RandomAccessDataSource`` over one split of a pool (picklable: holds only paths)."""

    def __init__(self, pool: TaskPool, split: str | None = None):
        self.root = pool.root
        self.split = split
        self._positions = pool.positions(split)
        self._shards = pool._shards
        self._pool: TaskPool | None = pool
        self._cls = type(pool)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, i: int) -> Task:
        if self._pool is None:
            self._pool = self._cls(self.root, _shards=self._shards)
        return self._pool[self._positions[i]]

    def __getstate__(self) -> dict[str, Any]:
        shards = self._pool._shards if self._pool is not None else self._shards
        return {"root": self.root, "split": self.split, "_positions": self._positions, "_pool": None,
                "_shards": shards, "_cls": self._cls}  # fmt: skip

    def __repr__(self) -> str:
        return f"TaskDataSource(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
