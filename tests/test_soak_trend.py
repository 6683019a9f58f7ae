"""The soak's verdict (tests/soak_trend.py) on made-up records: a process whose memory swings
between two levels but does not grow passes; one that leaks 10% over the run fails."""

import random

from soak_trend import trend


def _records(leak: float) -> tuple[list[dict], list[dict]]:
    rnd = random.Random(0)
    swing = lambda i: rnd.choice([0, 400]) * (i % 7 == 0)  # noqa: E731  an occasional high step
    steps = [
        {"step": i, "time": i * 0.7, "host_rss_mb": 900 * (1 + leak * i / 2500) + swing(i)}
        for i in range(1, 2501)
    ]
    samples = [
        {"minute": m / 2, "rss_mb": rnd.choice([900, 1300]), "threads": 40, "fds": 16} for m in range(1, 61)
    ]
    return samples, steps


def test_swinging_but_flat_memory_passes_and_a_leak_fails():
    flat = trend(*_records(0.0))
    assert abs(flat["rss_growth"]) < 0.01 and flat["warm_steps"] > 2000 and flat["step_window"] > 200
    leak = trend(*_records(0.10))
    assert leak["rss_growth"] > 0.05
    assert flat["threads"] == (40, 40) and flat["fds"] == (16, 16)


def test_no_step_records_is_no_verdict():
    samples, _ = _records(0.0)
    assert trend(samples, [])["rss_growth"] == float("inf")
