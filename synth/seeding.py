"""Deterministic numbers from text: seeds for requests and generators, and split assignment.

Everything synth derives from (seed, plan, round, attempt) goes through here, so a run and its
resume make the same choices."""

from __future__ import annotations

import hashlib


def hash_int(text: str) -> int:
    """A 64-bit integer from ``text`` (first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def unit(*parts: object) -> float:
    """A number in [0, 1) from ``parts`` joined by ``:``."""
    return hash_int(":".join(map(str, parts))) / 2**64


def split_of(task_id: str, test_fraction: float) -> str:
    """``"test"`` for a ``test_fraction`` share of task ids (by hash), else ``"train"``."""
    return "test" if unit(task_id) < test_fraction else "train"
