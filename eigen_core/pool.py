"""The task pool: a directory of append-only JSONL shards plus a manifest.

Layout::

    POOL/manifest.json          {"format", "shards": [{"file", "sha256", "ids", "splits"}],
                                 "sha256" (of the shard list), "quarantined": [...]}
    POOL/manifest.prev.json     the manifest before the last change (for repair)
    POOL/shards/<uuid>.jsonl    one Task per line
    POOL/quarantine/            shards that failed their checksum, moved aside

Atomicity: a shard is written to a hidden temp file, fsync'd and renamed; only then is it added
to the manifest, which is itself replaced atomically under an advisory lock (several writers may
share a pool). Readers see only shards the manifest lists, so a writer killed at any point leaves
no partial shard visible. The manifest keeps each task's id and split, so a split's index is
built without parsing shards; shards are parsed lazily.

Damage is contained, not fatal: opening a pool checks every listed shard against its sha256 and
line count; a truncated, bit-flipped, replaced or missing shard is moved to ``quarantine/``, taken
out of the manifest (recorded under ``quarantined`` with the reason and its task ids), logged,
and the rest of the pool reads as before. A manifest that is not valid JSON or fails its own
checksum is rebuilt from ``manifest.prev.json`` plus the shard files written after it.

This lives in ``rollout`` (not ``synth``) because verifiers and the learner read pools and must
not import ``synth``; ``synth`` is the main writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from eigen_core.contracts import Task
from eigen_core.crashpoints import crash_point

FORMAT = "eigen-task-pool/1"
MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
QUARANTINE = "quarantine"
log = logging.getLogger(__name__)


class PoolError(Exception):
    """A pool directory that cannot be read as a task pool (names the file and the problem)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all; a failure (disk full, read-only) leaves no temp file."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("pool.before_rename")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _shards_digest(shards: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def _parse_manifest(path: Path) -> dict[str, Any]:
    """One manifest file, checked; raises PoolError naming the file and the problem."""
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PoolError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise PoolError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PoolError(f"{path}: format {got!r}, expected {FORMAT!r}")
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
        raise PoolError(f"{path}: 'shards' must list objects with file, sha256, ids and splits")
    if "sha256" in manifest and manifest["sha256"] != _shards_digest(shards):
        raise PoolError(f"{path}: the shard list does not match the manifest's own sha256 (corrupted)")
    return manifest


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.exists():
        return {"format": FORMAT, "shards": []}
    try:
        return _parse_manifest(path)
    except PoolError as e:
        damaged = e
    prev = root / PREVIOUS
    if not prev.exists():
        raise damaged
    try:
        manifest = _parse_manifest(prev)
    except PoolError:
        raise damaged from None
    return _adopt_orphans(root, manifest, f"rebuilt from {PREVIOUS} ({damaged})")


def _adopt_orphans(root: Path, manifest: dict[str, Any], why: str) -> dict[str, Any]:
    """``manifest`` plus the intact shard files it does not list (oldest first, new ids only)."""
    listed = {sh["file"] for sh in manifest["shards"]} | {q["file"] for q in manifest.get("quarantined", [])}
    ids = {i for sh in manifest["shards"] for i in sh["ids"]}
    orphans = sorted((root / "shards").glob("*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in orphans:
        name = f"shards/{path.name}"
        if name in listed:
            continue
        data = path.read_bytes()
        try:
            tasks = [Task.model_validate_json(line) for line in data.decode().splitlines()]
        except (ValueError, UnicodeDecodeError):
            continue  # not a shard we can vouch for: leave it where it is
        fresh = [t for t in tasks if t.id not in ids]
        if fresh and len(fresh) == len(tasks):
            ids.update(t.id for t in tasks)
            manifest["shards"].append(
                {"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                 "ids": [t.id for t in tasks], "splits": [t.split for t in tasks]}
            )  # fmt: skip
    manifest["repaired"] = why
    log.warning("task pool %s: manifest %s", root, why)
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically, keeping the one it replaces as ``manifest.prev.json``."""
    manifest = {k: v for k, v in manifest.items() if k != "repaired"}
    manifest["sha256"] = _shards_digest(manifest["shards"])
    current = root / MANIFEST
    if current.exists():
        with contextlib.suppress(PoolError):
            _parse_manifest(current)  # only a sound manifest becomes the fallback
            _atomic_write(root / PREVIOUS, current.read_bytes())
    _atomic_write(current, json.dumps(manifest).encode())


def _shard_problem(root: Path, shard: dict[str, Any]) -> str | None:
    """Why a listed shard cannot be trusted (None: its bytes are what the manifest recorded)."""
    path = root / shard["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        return "sha256 does not match the manifest (truncated or corrupted)"
    lines = data.count(b"\n")
    if lines != len(shard["ids"]):
        return f"{lines} lines for {len(shard['ids'])} tasks"
    return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class PoolWriter:
    """Appends tasks to a pool in shards of ``shard_size``. Use as a context manager (flushes).

    Ids are unique in a pool: ``add`` skips ids already published or queued, and ``flush`` drops
    ids that another writer published meanwhile (it writes under the pool lock). So a generator
    that was killed and restarted with the same seed, or two writers racing on the same tasks,
    neither duplicate nor lose tasks.
    """

    def __init__(self, root: str | Path, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.root = Path(root)
        self.shard_size = shard_size
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self._published: set[str] = set()
        self._shards_seen = 0
        self._refresh(_read_manifest(self.root))
        self._buffer: dict[str, Task] = {}
        self.written = 0
        """Tasks this writer has published."""

    def _refresh(self, manifest: dict[str, Any]) -> None:
        for shard in manifest["shards"][self._shards_seen :]:
            self._published.update(shard["ids"])
        self._shards_seen = len(manifest["shards"])

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
        with _locked(self.root):
            manifest = _read_manifest(self.root)
            self._refresh(manifest)
            tasks = [t for i, t in self._buffer.items() if i not in self._published]
            if not tasks:
                self._buffer = {}
                return
            data = "".join(t.model_dump_json() + "\n" for t in tasks).encode()
            name = f"shards/{uuid.uuid4().hex}.jsonl"
            _atomic_write(self.root / name, data)
            crash_point("pool.before_publish")  # the shard is on disk, the manifest knows nothing
            manifest["shards"].append(
                {
                    "file": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "ids": [t.id for t in tasks],
                    "splits": [t.split for t in tasks],
                }
            )
            try:
                _write_manifest(self.root, manifest)
            except OSError:
                with contextlib.suppress(OSError):
                    (self.root / name).unlink()  # never published: leave no orphan behind
                raise
            self._refresh(manifest)
            self._buffer = {}
        self.written += len(tasks)

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # Flush on clean exit and on errors alike: accepted tasks are never lost.
        self.flush()


class TaskPool:
    """Read access to a pool: ``len``, ids, splits, random access, iteration, grain datasets.

    Opening checks every shard (see the module docstring); ``quarantined`` lists the shards set
    aside, now and before, each with its reason and task ids."""

    def __init__(self, root: str | Path, *, _shards: list[dict[str, Any]] | None = None):
        self.root = Path(root)
        if not (self.root / MANIFEST).exists():
            raise PoolError(f"{self.root}: no {MANIFEST}; not a task pool (create one with synth.procedural)")
        if _shards is None:  # a worker reopening a pool it was handed keeps that pool's shards
            manifest = self._checked(_read_manifest(self.root))
            _shards = manifest["shards"]
            self.quarantined: list[dict[str, Any]] = manifest.get("quarantined", [])
        else:
            self.quarantined = []
        self._shards = _shards
        self._index = [(s, i) for s, shard in enumerate(self._shards) for i in range(len(shard["ids"]))]
        self._load_shard = lru_cache(maxsize=64)(self._parse_shard)

    def _checked(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Quarantine damaged shards (and save a repaired manifest) when this process may write."""
        bad = {sh["file"]: why for sh in manifest["shards"] if (why := _shard_problem(self.root, sh))}
        if not bad and "repaired" not in manifest:
            return manifest
        try:
            with _locked(self.root):
                current = _read_manifest(self.root)  # another process may have acted meanwhile
                bad = {sh["file"]: w for sh in current["shards"] if (w := _shard_problem(self.root, sh))}
                manifest = self._quarantine(current, bad)
                _write_manifest(self.root, manifest)
        except OSError as e:  # a read-only pool: leave the files, exclude in memory
            log.warning("task pool %s: cannot record the quarantine (%s); excluding in memory", self.root, e)
            manifest = self._quarantine(manifest, bad, move=False)
        return manifest

    def _quarantine(self, manifest: dict[str, Any], bad: dict[str, str], move: bool = True) -> dict[str, Any]:
        keep, out = [], list(manifest.get("quarantined", []))
        for sh in manifest["shards"]:
            if sh["file"] not in bad:
                keep.append(sh)
                continue
            src = self.root / sh["file"]
            if move and src.exists():
                (self.root / QUARANTINE).mkdir(exist_ok=True)
                shutil.move(src, self.root / QUARANTINE / src.name)
            out.append({**sh, "reason": bad[sh["file"]], "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            log.warning(
                "task pool %s: quarantined %s (%s): %d tasks excluded",
                self.root, sh["file"], bad[sh["file"]], len(sh["ids"]),
            )  # fmt: skip
        return {**manifest, "shards": keep, "quarantined": out}

    def __len__(self) -> int:
        return len(self._index)

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self._shards:
            for sp in shard["splits"]:
                counts[sp] = counts.get(sp, 0) + 1
        return counts

    def positions(self, split: str | None = None) -> list[int]:
        """Global positions of the tasks in ``split`` (all if None), in pool order."""
        return [
            n
            for n, (s, i) in enumerate(self._index)
            if split is None or self._shards[s]["splits"][i] == split
        ]

    def _parse_shard(self, s: int) -> list[Task]:
        shard = self._shards[s]
        path = self.root / shard["file"]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise PoolError(f"{path}: sha256 does not match the manifest (corrupted shard)")
        tasks = []
        for lineno, line in enumerate(data.decode().splitlines(), 1):
            try:
                tasks.append(Task.model_validate_json(line))
            except ValueError as e:
                raise PoolError(f"{path}:{lineno}: invalid task: {e}") from None
        return tasks

    def __getitem__(self, n: int) -> Task:
        s, i = self._index[n]
        return self._load_shard(s)[i]

    def tasks(self, split: str | None = None) -> Iterator[Task]:
        for n in self.positions(split):
            yield self[n]

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

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, i: int) -> Task:
        if self._pool is None:
            self._pool = TaskPool(self.root, _shards=self._shards)
        return self._pool[self._positions[i]]

    def __getstate__(self) -> dict[str, Any]:
        shards = self._pool._shards if self._pool is not None else self._shards
        return {"root": self.root, "split": self.split, "_positions": self._positions, "_pool": None,
                "_shards": shards}  # fmt: skip

    def __repr__(self) -> str:
        return f"TaskDataSource(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
