"""Procedural task generation: seeded generators per domain, self-validated, into a task pool."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from eigen_core.config import PoolConfig
from eigen_core.contracts import Task
from eigen_core.domains import get_domain
from eigen_core.pool import PoolWriter
from synth.config import ProceduralConfig
from synth.procedural.shop import generate_shop_task
from synth.validate import validate_task
from verifiers.config import VerifierConfig
from verifiers.perturb import expects_no_change
from verifiers.sandbox import Sandbox

GENERATORS: dict[str, Callable[[ProceduralConfig, int], Task]] = {"shop": generate_shop_task}
"""Domain name -> ``generate(cfg, index) -> Task``."""


@dataclass
class GenerationReport:
    requested: int = 0
    accepted: int = 0
    already_in_pool: int = 0
    rejected: int = 0
    rejections: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    no_change: int = 0
    """Accepted tasks whose correct outcome changes nothing (every request must be refused)."""
    seconds: float = 0.0
    sandbox: dict[str, Any] = field(default_factory=dict)
    """The checker sandbox's ``describe()``: its layers, and whether it ran weak."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "accepted": self.accepted,
            "already_in_pool": self.already_in_pool,
            "rejected": self.rejected,
            "rejections": dict(self.rejections),
            "splits": dict(self.splits),
            "no_change": self.no_change,
            "seconds": round(self.seconds, 3),
            "sandbox": self.sandbox,
        }


def generate_to_pool(
    domain_name: str,
    cfg: ProceduralConfig,
    pool: PoolConfig,
    verifier: VerifierConfig,
    *,
    progress: bool = True,
) -> GenerationReport:
    """Generate tasks ``0..cfg.num_tasks-1``, validate each, append the valid ones to the pool.

    Ids already in the pool are skipped, so an interrupted run continues where it stopped.
    """
    if domain_name not in GENERATORS:
        raise ValueError(f"no procedural generator for domain {domain_name!r}; have: {sorted(GENERATORS)}")
    gen, domain = GENERATORS[domain_name], get_domain(domain_name)
    report = GenerationReport(requested=cfg.num_tasks)
    t0 = time.perf_counter()
    workers = verifier.sandbox_workers
    sandbox = Sandbox.from_config(verifier)
    report.sandbox = sandbox.describe()

    def make(i: int) -> tuple[Task, list[str] | None]:
        task = gen(cfg, i)
        if task.id in writer:
            return task, None
        return task, validate_task(task, domain, sandbox)

    # Threads overlap the sandbox round trips (the checks run in other processes); ``map`` keeps
    # pool order equal to index order, so a resumed run writes the same pool.
    with sandbox, PoolWriter(pool.dir, pool.shard_size) as writer, ThreadPoolExecutor(workers) as ex:
        results = ex.map(make, range(cfg.num_tasks))
        for task, reasons in tqdm(
            results, total=cfg.num_tasks, desc="generate", unit="task", disable=not progress
        ):
            if reasons is None:
                report.already_in_pool += 1
                continue
            if reasons:
                report.rejected += 1
                report.rejections.update(reasons)
                continue
            writer.add(task)
            report.accepted += 1
            report.splits[task.split] += 1
            report.no_change += expects_no_change(task, domain.write_tools)
    report.seconds = time.perf_counter() - t0
    return report
