"""Batches for pretraining a from-scratch base model (pure numpy, seeded per step).

A tool-using agent copies: ids from the user's message into tool arguments, amounts from a tool's
output into its reply. Real base models bring that ability from pretraining (induction heads);
a tiny model trained only on a few hundred dialogues does not form it (its loss plateaus at the
entropy of the id digits). So the base is pretrained on two sources:

- **copy sequences**: random tokens in which a span reappears at a random later offset; the loss
  is on the repeated tokens after the first, which only an in-context copy (attend to the earlier
  occurrence of the current token, predict its successor) can predict. The offset is random, so
  a fixed-distance positional shortcut does not solve it.
- **domain text**: windows of a token stream (the policy, tool schemas and the train split's task
  records), so the base also knows the vocabulary's statistics before SFT.
"""

from __future__ import annotations

import numpy as np


def copy_sequences(rng: np.random.Generator, n: int, length: int, ids: np.ndarray) -> dict[str, np.ndarray]:
    """``n`` rows of tokens drawn uniformly from ``ids`` where a prefix reappears after a random
    gap; ``loss_mask`` marks the predictable copied tokens."""
    if length < 24:
        raise ValueError(f"copy sequences need length >= 24, got {length}")
    tokens = ids[rng.integers(0, len(ids), size=(n, length))].astype(np.int32)
    mask = np.zeros((n, length), np.int32)
    for r in range(n):
        a = int(rng.integers(8, length // 2 - 3))
        gap = int(rng.integers(0, length // 5))
        span = min(a, length - a - gap)
        start = a + gap
        tokens[r, start : start + span] = tokens[r, :span]
        # The first copied token follows random filler: unpredictable, so not trained.
        mask[r, start + 1 : start + span] = 1
    return {"tokens": tokens, "attn_mask": np.ones((n, length), np.int32), "loss_mask": mask}


def text_windows(rng: np.random.Generator, stream: np.ndarray, n: int, length: int) -> dict[str, np.ndarray]:
    """``n`` random windows of ``length`` tokens from ``stream``, every token trained."""
    if len(stream) <= length:
        raise ValueError(f"the text stream has {len(stream)} tokens, fewer than one window of {length}")
    starts = rng.integers(0, len(stream) - length, size=n)
    tokens = np.stack([stream[s : s + length] for s in starts]).astype(np.int32)
    ones = np.ones((n, length), np.int32)
    return {"tokens": tokens, "attn_mask": ones, "loss_mask": ones.copy()}


def mixed_batch(
    rng: np.random.Generator,
    stream: np.ndarray,
    batch_size: int,
    length: int,
    copy_fraction: float,
    ids: np.ndarray,
) -> dict[str, np.ndarray]:
    """A batch whose first ``round(copy_fraction * batch_size)`` rows are copy sequences and the
    rest domain-text windows."""
    k = round(copy_fraction * batch_size)
    parts = []
    if k:
        parts.append(copy_sequences(rng, k, length, ids))
    if batch_size - k:
        parts.append(text_windows(rng, stream, batch_size - k, length))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
