"""The soak's verdict from its samples (tests/test_soak.py and tools/bench/soak.py).

RSS alternates between levels with the batch in flight (~900 and ~1300 MB in the recorded run),
so a window's median says which level its samples happened to catch, not whether memory grows.
A leak lifts both levels: each window's low (minimum) and high (maximum) are compared, first
window after warm-up against the last, and the larger of the two growths is the soak's growth.
Threads and descriptors compare window medians (a checkpoint being written holds a few extra
for a moment)."""

from __future__ import annotations

import statistics
from typing import Any


def trend(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``samples``: ``{"minute", "rss_mb", "threads", "fds"}`` in time order. Warm-up is the
    first sixth of the run (compiles of new prompt buckets, the first checkpoint's threads);
    the windows are up to 10 samples (a third of what follows warm-up, at least 1)."""
    warm_from = samples[-1]["minute"] / 6
    warm = [s for s in samples if s["minute"] >= warm_from]
    k = max(1, min(10, len(warm) // 3))
    first, last = warm[:k], warm[-k:]
    rss = lambda xs, f: f(s["rss_mb"] for s in xs)  # noqa: E731
    low = rss(last, min) / rss(first, min) - 1
    high = rss(last, max) / rss(first, max) - 1
    med = lambda xs, key: statistics.median(s[key] for s in xs)  # noqa: E731
    return {
        "warm_from": warm_from,
        "warm_samples": len(warm),
        "window": k,
        "rss_low_mb": (rss(first, min), rss(last, min)),
        "rss_high_mb": (rss(first, max), rss(last, max)),
        "rss_growth": max(low, high),
        "threads": (med(first, "threads"), med(last, "threads")),
        "fds": (med(first, "fds"), med(last, "fds")),
    }
