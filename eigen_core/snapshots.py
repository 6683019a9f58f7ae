"""DB snapshots that tasks start from: stored once per pool, referenced by content.

A source may give many tasks one of a few start databases (the released AReaL-SEA RL data: 1,982
tasks on 9 DB files of up to several MB). Copying the DB into every task would multiply the pool
by the task count, so each snapshot is stored once, under its own digest, in the pool's store::

    snapshots/<sha256>.<ext>     the DB file's bytes as given (ext: json, toml, yaml)

and a task names it as ``initial_state.reference = "snapshot:<sha256>.<ext>"``. The reference
is content-addressed: it cannot point at the wrong bytes (a read checks the digest), importing
the same file twice stores it once, and a pool copied elsewhere keeps its references valid.

A process resolves references through the stores of the pools it opened (``TaskPool`` registers
its store here) or that it registered itself (``register``); the domain parses the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import tomllib
from functools import lru_cache
from typing import Any

from eigen_core.storage import PoolStore, open_store

PREFIX = "snapshot:"
DIRECTORY = "snapshots"
FORMATS = ("json", "toml", "yaml")
"""File formats a snapshot may have (its extension says which)."""

_stores: dict[str, PoolStore] = {}  # location -> store, in registration order
_lock = threading.Lock()


class SnapshotError(ValueError):
    """A snapshot reference that cannot be resolved or whose bytes are not what it names."""


def is_snapshot(reference: str | None) -> bool:
    """Whether an ``InitialState.reference`` names a stored snapshot."""
    return reference is not None and reference.startswith(PREFIX)


def _parts(reference: str) -> tuple[str, str]:
    name = reference[len(PREFIX) :]
    digest, _, ext = name.partition(".")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or ext not in FORMATS:
        raise SnapshotError(
            f"malformed snapshot reference {reference!r}: expected 'snapshot:<sha256>.<{'|'.join(FORMATS)}>'"
        )
    return digest, ext


def put(store: PoolStore, data: bytes, fmt: str) -> str:
    """Store ``data`` (a DB file in format ``fmt``) in ``store`` unless it is there; returns its
    reference. Raises ``OSError`` when the store cannot be written."""
    if fmt not in FORMATS:
        raise SnapshotError(f"snapshot format {fmt!r} is not one of {', '.join(FORMATS)}")
    ref = f"{PREFIX}{hashlib.sha256(data).hexdigest()}.{fmt}"
    key = f"{DIRECTORY}/{ref[len(PREFIX) :]}"
    if store.read(key).data != data:  # absent (or damaged: rewritten whole)
        store.write(key, data)
    return ref


def register(location: str | os.PathLike[str] | PoolStore) -> None:
    """Resolve references through this pool's store too (a path, a URL, or a store)."""
    store = open_store(location) if isinstance(location, (str, os.PathLike)) else location
    with _lock:
        _stores.setdefault(store.location, store)


def read(reference: str) -> bytes:
    """The bytes ``reference`` names, from the first registered store that holds them."""
    digest, ext = _parts(reference)
    return _read(digest, ext)


@lru_cache(maxsize=16)
def _read(digest: str, ext: str) -> bytes:
    key = f"{DIRECTORY}/{digest}.{ext}"
    with _lock:
        stores = list(_stores.values())
    for store in stores:
        data = store.read(key).data
        if data is None:
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            raise SnapshotError(f"{store.name(key)}: sha256 does not match its name (corrupted snapshot)")
        return data
    where = ", ".join(s.location for s in stores) or "none"
    raise SnapshotError(
        f"DB snapshot {PREFIX}{digest}.{ext} is in no task pool this process opened (pools: {where}); "
        "open the pool that holds it (TaskPool(dir), or eigen_core.snapshots.register(dir))"
    )


def parse(reference: str) -> Any:
    """The snapshot's data (a dict), parsed by its format."""
    _, ext = _parts(reference)
    text = read(reference).decode()
    if ext == "json":
        return json.loads(text)
    if ext == "toml":
        return tomllib.loads(text)
    import yaml

    return yaml.safe_load(text)
