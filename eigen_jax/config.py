"""The full run config: every section, as ``python -m eigen_jax.train`` validates it.

Each section's model lives with the package that owns it; this module only composes them (it is
plain pydantic and imports no JAX).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eigen_core.config import DomainConfig, PoolConfig, RunSection
from eigen_core.configio import Section
from eigen_jax.distributed import DistributedSection
from eigen_jax.train_config import (
    CheckpointSection,
    EvalSection,
    GRPOSection,
    ModelSection,
    PretrainSection,
    SFTSection,
)
from rollout.config import EpisodeConfig
from synth.config import ImportSection, ProceduralConfig
from verifiers.config import VerifierConfig

Stage = Literal["import", "generate", "selfcheck", "pretrain", "sft_user", "sft_agent", "grpo", "eval"]
"""Stages ``eigen_jax.train`` can run."""


class TrainRunSection(RunSection):
    """The shared ``run`` section, plus the stages ``eigen_jax.train`` runs."""

    stages: list[Stage] = Field(default_factory=lambda: ["generate", "selfcheck"])
    """Stages to run, in order."""


class RunConfig(Section):
    """A whole run. Sections not used by the listed stages are validated all the same."""

    run: TrainRunSection = TrainRunSection()
    domain: DomainConfig = DomainConfig()
    imports: ImportSection = ImportSection()
    procedural: ProceduralConfig = ProceduralConfig()
    pool: PoolConfig = PoolConfig()
    episode: EpisodeConfig = EpisodeConfig()
    verifier: VerifierConfig = VerifierConfig()
    model: ModelSection = ModelSection()
    pretrain: PretrainSection = PretrainSection()
    sft_user: SFTSection = SFTSection()
    sft_agent: SFTSection = SFTSection()
    grpo: GRPOSection = GRPOSection()
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    distributed: DistributedSection = DistributedSection()
