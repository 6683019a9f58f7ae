"""Near-duplicate detection for synthesized tasks.

A task's features are its gold and forbidden actions (name + canonical arguments), its required
outputs, and the word bigrams of what the user says and is told; two tasks are near duplicates
when the Jaccard similarity of their features reaches a threshold. An inverted index keeps the
lookup proportional to the tasks that share a feature, not to the pool.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

from eigen_core.contracts import Task
from eigen_core.domain import canonical_json


def task_features(task: Task) -> frozenset[str]:
    feats = {f"gold:{a.name}:{canonical_json(a.arguments)}" for a in task.gold_actions}
    feats |= {f"forbid:{a.name}:{canonical_json(a.arguments)}" for a in task.forbidden_actions}
    feats |= {f"out:{o.lower()}" for o in task.required_outputs}
    sc = task.scenario
    words = re.findall(r"[a-z0-9]+", f"{sc.reason_for_call} {sc.task_instructions}".lower())
    feats |= {f"text:{a} {b}" for a, b in itertools.pairwise(words)}
    return frozenset(feats)


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


class Deduper:
    """Remembers accepted tasks; ``match`` finds the most similar one at or above threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._features: dict[str, frozenset[str]] = {}
        self._index: dict[str, set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._features)

    def match(self, task: Task) -> tuple[str, float] | None:
        """``(id, similarity)`` of the closest remembered task if it is a near duplicate."""
        feats = task_features(task)
        candidates = set().union(*(self._index[f] for f in feats)) if feats else set()
        best: tuple[str, float] | None = None
        for cid in candidates:
            s = similarity(feats, self._features[cid])
            if s >= self.threshold and (best is None or s > best[1]):
                best = (cid, s)
        return best

    def add(self, task: Task) -> None:
        feats = task_features(task)
        self._features[task.id] = feats
        for f in feats:
            self._index[f].add(task.id)
