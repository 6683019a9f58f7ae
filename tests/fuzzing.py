"""Hypothesis settings for the fuzz targets: ``fuzz(n)`` runs n examples, times
``$EIGEN_FUZZ_SCALE`` (tools/bench/fuzz.py runs them at a larger scale for RELIABILITY.md)."""

import os

from hypothesis import HealthCheck, settings


def fuzz(n: int) -> settings:
    scale = float(os.environ.get("EIGEN_FUZZ_SCALE", "1"))
    return settings(
        max_examples=max(1, int(n * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
