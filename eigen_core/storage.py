"""Storage every host reaches: a POSIX directory, or any tensorstore key-value store.

A task pool is a handful of whole objects under keys (``manifest.json``, ``shards/<name>.jsonl``,
...), and so is an HF export. Pod hosts share a bucket, not a file system, so users of a store
ask it for a few things only:
read an object with its *generation* (a token that changes whenever the object does), write one
whole, replace one only if its generation is still the one read (compare-and-swap: how several
writers on several hosts update one manifest without a lock), list keys, delete.

- ``DirStore``: a plain path. Writes are fsync'd temp files renamed into place (crash-safe on a
  local disk); the swap compares under an advisory ``flock`` (the one lock, held for
  microseconds); a generation is the object's sha256.
- ``KvStore``: a tensorstore kvstore URL (``file://``, ``memory://``, ``gs://``, ``s3://``, ...).
  tensorstore writes each value whole and checks ``if_equal`` generations itself (object
  generations on GCS, lock files on ``file://``). ``memory://`` stores live in this process
  (one shared tensorstore context), for tests and throwaway pools.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from eigen_core.crashpoints import crash_point


@dataclass(frozen=True)
class Blob:
    """An object as read: its bytes (None: no such key) and its generation."""

    data: bytes | None
    generation: bytes


class PoolStore(Protocol):
    """Whole objects under string keys (``a/b.jsonl``), with generations for compare-and-swap."""

    location: str
    """What the user gave (a path or a URL), for messages."""

    def name(self, key: str) -> str:
        """Where ``key`` lives, for messages (a path or a URL)."""
        ...

    def read(self, key: str) -> Blob:
        """The object and its generation (``data`` None if absent). Raises ``OSError`` when the
        store cannot be read."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Write the object whole (never seen half-written). Raises ``OSError``."""
        ...

    def swap(self, key: str, data: bytes, generation: bytes) -> bool:
        """Write ``data`` only if the object's generation is still ``generation`` (from ``read``,
        also for an absent key); False, changing nothing, if another writer got there first."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (no error if it is already gone)."""
        ...

    def move(self, src: str, dst: str) -> None:
        """Put ``src``'s object under ``dst`` and remove ``src`` (nothing if ``src`` is gone)."""
        ...


def open_store(location: str | os.PathLike[str]) -> PoolStore:
    """The store for a pool location: a ``scheme://`` URL goes to tensorstore, a path to a
    directory."""
    text = os.fspath(location)
    if "://" in text:
        return _kvstore(text.rstrip("/") + "/")
    return DirStore(Path(text))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
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


class DirStore:
    """A pool in a local (or NFS) directory."""

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    def name(self, key: str) -> str:
        return str(self.root / key)

    def read(self, key: str) -> Blob:
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return Blob(None, b"")
        return Blob(data, hashlib.sha256(data).digest())

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def swap(self, key: str, data: bytes, generation: bytes) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if self.read(key).generation != generation:
                    return False
                self.write(key, data)
                return True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def keys(self, prefix: str) -> list[str]:
        folder, _, start = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            return []
        names = (p.name for p in base.iterdir() if p.is_file() and not p.name.startswith("."))
        return sorted(f"{folder}/{n}" if folder else n for n in names if n.startswith(start))

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> None:
        if (self.root / src).exists():
            (self.root / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / src, self.root / dst)


class KvStore:
    """A pool in a tensorstore key-value store."""

    def __init__(self, url: str):
        import tensorstore as ts  # lazy: only pools on URLs need it

        self._ts = ts
        self.location = url
        try:
            self._kv = ts.KvStore.open(url, context=_context()).result()
        except Exception as e:  # tensorstore raises ValueError for bad specs and I/O alike
            raise OSError(f"{url}: cannot open the key-value store ({e})") from e

    def name(self, key: str) -> str:
        return self.location + key

    def _call(self, what: str, key: str, run):
        try:
            return run().result()
        except Exception as e:
            raise OSError(f"{self.name(key)}: {what} failed ({e})") from e

    def read(self, key: str) -> Blob:
        r = self._call("read", key, lambda: self._kv.read(key))
        return Blob(bytes(r.value) if r.state == "value" else None, bytes(r.stamp.generation))

    def write(self, key: str, data: bytes) -> None:
        self._call("write", key, lambda: self._kv.write(key, data))

    def swap(self, key: str, data: bytes, generation: bytes) -> bool:
        stamp = self._call("conditional write", key, lambda: self._kv.write(key, data, if_equal=generation))
        return bool(stamp.generation)  # an empty generation: the condition failed, nothing written

    def keys(self, prefix: str) -> list[str]:
        rng = self._ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)) if prefix else None
        found = self._call("list", prefix, lambda: self._kv.list(rng) if rng else self._kv.list())
        return sorted(k.decode() for k in found)

    def delete(self, key: str) -> None:
        rng = self._ts.KvStore.KeyRange(key, key + "\x00")
        self._call("delete", key, lambda: self._kv.delete_range(rng))

    def move(self, src: str, dst: str) -> None:
        blob = self.read(src)
        if blob.data is not None:
            self.write(dst, blob.data)
            self.delete(src)


def upload(src: Path, location: str | os.PathLike[str]) -> list[str]:
    """Copy every file under the directory ``src`` to ``location`` (a path or a kvstore URL),
    keyed by its path relative to ``src``; returns the keys written. One file in memory at a
    time (an HF export's shards are written one by one, so this is one shard)."""
    store = open_store(location)
    keys = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        key = path.relative_to(src).as_posix()
        store.write(key, path.read_bytes())
        keys.append(key)
    return keys


@lru_cache(maxsize=1)
def _context():
    import tensorstore as ts

    return ts.Context()  # one per process: every memory:// store opened here is the same one


@lru_cache(maxsize=64)
def _kvstore(url: str) -> KvStore:
    return KvStore(url)
