"""The soak's verdict from its records (tests/test_soak.py and tools/bench/soak.py).

Two records: ``steps``, the GRPO metrics rows, each with the process's resident memory at the
end of its step (``host_rss_mb``, logged at the same point of every step's cycle), and
``samples``, taken from outside every 30 s with threads and descriptors. RSS seen from outside
alternates between levels with the batch in flight (~900 and ~1300 MB in an earlier recorded
run), so a window of those says which level it happened to catch, not whether memory grows;
the verdict is the step-end RSS: the median of the last tenth of the steps after warm-up against
the first tenth's (hundreds of steps each). The outside samples' lows and highs are reported
beside it. Threads and descriptors compare window medians (a checkpoint being written holds a
few extra for a moment)."""

from __future__ import annotations

import statistics
from typing import Any


def trend(samples: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """``samples``: ``{"minute", "rss_mb", "threads", "fds"}`` in time order; ``steps``:
    ``{"step", "time", "host_rss_mb"}`` rows (``time`` in seconds). Warm-up is the first sixth
    of the run (compiles of new prompt buckets, the first checkpoint's threads)."""
    warm_from = samples[-1]["minute"] / 6
    warm = [s for s in samples if s["minute"] >= warm_from]
    k = max(1, min(10, len(warm) // 3))
    first, last = warm[:k], warm[-k:]
    rss = lambda xs, f: f(s["rss_mb"] for s in xs)  # noqa: E731
    med = lambda xs, key: statistics.median(s[key] for s in xs)  # noqa: E731
    hot = [r for r in steps if "host_rss_mb" in r]
    hot = [r for r in hot if r["time"] >= hot[-1]["time"] / 6] if hot else []
    n = max(1, len(hot) // 10)
    step_rss = (med(hot[:n], "host_rss_mb"), med(hot[-n:], "host_rss_mb")) if hot else (0.0, 0.0)
    return {
        "warm_from": warm_from,
        "warm_samples": len(warm),
        "warm_steps": len(hot),
        "window": k,
        "step_window": n,
        "step_rss_mb": step_rss,
        "rss_growth": step_rss[1] / step_rss[0] - 1 if hot else float("inf"),
        "rss_low_mb": (rss(first, min), rss(last, min)),
        "rss_high_mb": (rss(first, max), rss(last, max)),
        "threads": (med(first, "threads"), med(last, "threads")),
        "fds": (med(first, "fds"), med(last, "fds")),
    }
