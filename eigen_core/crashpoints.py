"""Named crash points for kill -9 testing: ``EIGEN_CRASH_AT=name:k`` makes the process SIGKILL
itself the k-th time it reaches ``crash_point(name)`` (several: ``a:1,b:3``).

Random-time kills rarely land inside the few milliseconds that matter (between a shard's write
and its publication, inside a checkpoint save, halfway through a journal line); these points put
a kill exactly there. Unset, a crash point costs one ``None`` check.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

_SPEC = os.environ.get("EIGEN_CRASH_AT") or None
_targets: dict[str, int] | None = None
_hits: Counter[str] = Counter()


def crash_point(name: str, before: Callable[[], object] | None = None) -> None:
    """Die here (after ``before()``, e.g. half a write) if ``EIGEN_CRASH_AT`` names this point."""
    global _targets
    if _SPEC is None:
        return
    if _targets is None:
        _targets = {}
        for item in _SPEC.split(","):
            point, _, k = item.partition(":")
            _targets[point.strip()] = int(k or 1)
    if name not in _targets:
        return
    _hits[name] += 1
    if _hits[name] == _targets[name]:
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)
