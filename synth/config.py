"""Config sections owned by ``synth``: the procedural generator and the task pool."""

from __future__ import annotations

from pydantic import Field, model_validator

from rollout.configio import Section


class ProceduralConfig(Section):
    seed: int = 0
    """Generator seed. Task i depends only on (seed, i), so runs extend and resume exactly."""
    num_tasks: int = Field(1000, ge=1)
    """Tasks to generate."""
    min_actions: int = Field(1, ge=1)
    """Fewest requests per task (each valid request is one write action)."""
    max_actions: int = Field(3, ge=1)
    """Most requests per task."""
    forbidden_prob: float = Field(0.3, ge=0.0, le=1.0)
    """Chance that a request is one the policy forbids (the agent must refuse it)."""
    distractor_customers: int = Field(2, ge=0)
    """Other customers in each task's DB; their orders are targets of ownership violations."""
    orders_per_customer: int = Field(3, ge=1)
    """Orders per customer beyond those the requests need (distractor records)."""
    id_digits: int = Field(4, ge=2, le=8)
    """Digits of customer ids (order ids get one more). Fewer digits make ids a token or two of a
    small vocabulary, which a tiny model learns to copy in minutes (the quickstart); the default
    is realistic."""
    test_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """Share of tasks put in the ``test`` split (chosen by a hash of the task id)."""

    @model_validator(mode="after")
    def _check_range(self) -> ProceduralConfig:
        if self.min_actions > self.max_actions:
            raise ValueError(f"min_actions ({self.min_actions}) > max_actions ({self.max_actions})")
        return self


class PoolConfig(Section):
    dir: str = "runs/pool"
    """Task pool directory (created if missing)."""
    shard_size: int = Field(256, ge=1)
    """Tasks per shard file."""
