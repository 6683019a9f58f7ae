"""Host-side prefix cache for the embedded sampler: the KV of recently served sequences.

A multi-turn episode sends the engine its whole transcript every turn, and all but the last
turn's continuation was already run through the model (as last turn's prompt and sampled
tokens). Keeping each served sequence's keys and values lets the next request prefill only its
new tokens. Lookup is by longest common prefix, not exact match, so it also pays off for
callers that re-render their prompt (the LM user simulator) and for the system prompt that
every episode shares. The KV of token j depends only on tokens <= j, so any common prefix is
reusable exactly.

Entries are tagged with the policy version that computed them; after a weight swap they no
longer match and are dropped (vLLM resets its prefix cache on weight updates for the same
reason). Memory is bounded by a byte budget, least recently used first.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class CachedPrefix:
    """One served sequence: its token ids and their keys and values ([layers, len, kv_heads,
    head_dim] each, the cache's layout), computed by the weights tagged ``version``; an MoE
    sampler that records routes keeps theirs too (``routes``), so a hit still reports them."""

    tokens: np.ndarray
    k: np.ndarray
    v: np.ndarray
    version: int
    routes: np.ndarray | None = None
    """[len, moe_layers, k] expert ids of each token (-1: none recorded), or None."""

    @property
    def nbytes(self) -> int:
        extra = 0 if self.routes is None else self.routes.nbytes
        return self.tokens.nbytes + self.k.nbytes + self.v.nbytes + extra


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two int arrays."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if len(differ) else m


class PrefixStore:
    """LRU store of ``CachedPrefix`` entries under a byte budget (thread-safe).

    Args:
        budget_bytes: most bytes of keys, values and token ids kept; the least recently used
            entries go first.
    """

    def __init__(self, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"prefix cache budget must be positive, got {budget_bytes} bytes")
        self.budget = self._full = budget_bytes
        self._children: weakref.WeakSet[PrefixStore] = weakref.WeakSet()
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._next_id = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self.looked_up_tokens = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def total_nbytes(self) -> int:
        """This store's bytes and those of its live ``child`` stores."""
        return self._bytes + sum(c.nbytes for c in list(self._children))

    def child(self, share: float) -> PrefixStore | None:
        """A new, empty store of ``share`` of this one's budget (a lockstep cohort's own),
        counted in ``total_nbytes`` while anyone holds it; None if the share holds nothing."""
        budget = int(self._full * share)
        if budget <= 0:
            return None
        store = PrefixStore(budget)
        self._children.add(store)
        return store

    def lookup(self, prompt: Sequence[int], version: int) -> tuple[int, CachedPrefix | None]:
        """The longest cached prefix of ``prompt`` computed by ``version``: (its length, the
        entry). At most ``len(prompt) - 1`` tokens: the last prompt token must still run through
        the model to give the first sampled token's logits."""
        ids = np.asarray(prompt, np.int32)
        limit = len(ids) - 1
        best, best_id = 0, None
        with self._lock:
            for key, e in self._entries.items():
                if e.version != version:
                    continue
                n = common_prefix(e.tokens, ids[:limit])
                if n > best:
                    best, best_id = n, key
            self.looked_up_tokens += len(ids)
            self.hit_tokens += best
            if best_id is None:
                return 0, None
            self._entries.move_to_end(best_id)
            return best, self._entries[best_id]

    def put(self, entry: CachedPrefix) -> None:
        """Add ``entry``; drop entries of other versions and those it extends (their tokens are
        a prefix of its own, so it serves every lookup they would), then evict to the budget."""
        if entry.nbytes > self.budget:
            return
        with self._lock:
            for key, e in list(self._entries.items()):
                stale = e.version != entry.version
                if stale or (
                    len(e.tokens) <= len(entry.tokens)
                    and common_prefix(e.tokens, entry.tokens) == len(e.tokens)
                ):
                    self._drop(key)
            self._entries[self._next_id] = entry
            self._next_id += 1
            self._bytes += entry.nbytes
            while self._bytes > self.budget:
                self._drop(next(iter(self._entries)))

    def scale(self, fraction: float) -> None:
        """Hold at most ``fraction`` of the budget this store was made with: the least recently
        used entries over it go now (a lockstep cohort's store, as its members end)."""
        with self._lock:
            self.budget = int(self._full * fraction)
            while self._bytes > self.budget:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        self._bytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens that came from the cache."""
        return self.hit_tokens / self.looked_up_tokens if self.looked_up_tokens else 0.0
