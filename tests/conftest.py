import os

# Eight fake CPU devices for mesh/sharding tests; must be set before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest

from eigen_core.domains import get_domain
from synth.config import ProceduralConfig
from synth.procedural.shop import generate_shop_task
from verifiers.sandbox import Sandbox


@pytest.fixture(scope="session")
def shop():
    return get_domain("shop")


@pytest.fixture(scope="session")
def sandbox():
    with Sandbox(workers=2, timeout_s=3.0, memory_mb=256) as sb:
        yield sb


@pytest.fixture(scope="session")
def shop_tasks():
    cfg = ProceduralConfig(seed=7, num_tasks=40)
    return [generate_shop_task(cfg, i) for i in range(cfg.num_tasks)]
