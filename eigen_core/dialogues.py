"""The dialogue pool: SFT examples that do not come from episodes (``Dialogue``), stored as a
task pool stores tasks (same shards, manifest, checksums, quarantine, concurrent writers), under
``<pool.dir>/sft``. The import stage writes the AReaL-SEA SFT rows here; ``sft_*.data:
imported`` trains on them."""

from __future__ import annotations

import os

from eigen_core.contracts import Dialogue
from eigen_core.pool import PoolWriter, TaskPool

SUBDIR = "sft"


def dialogue_root(pool_dir: str | os.PathLike[str]) -> str:
    """Where a task pool's dialogues live (a path or a URL)."""
    return os.fspath(pool_dir).rstrip("/") + "/" + SUBDIR


class DialogueWriter(PoolWriter):
    """``PoolWriter`` of ``Dialogue`` records."""

    record = Dialogue


class DialoguePool(TaskPool):
    """``TaskPool`` of ``Dialogue`` records (``tasks()`` yields dialogues)."""

    record = Dialogue
