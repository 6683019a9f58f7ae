"""Eval config: the ``eval`` section that ``eigen_jax.train``'s eval stage and the standalone eval
share, and the standalone eval's whole config (``python -m eigen_jax.eval --config X.yaml``).

The standalone eval speaks the train config's vocabulary: ``run`` (where, seed, progress),
``domain``, ``episode`` (steps, prompt, concurrency, the rule-based user's patience), ``pool``
(``dir``), ``verifier``; the agent and the user are ``EndpointSection``s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from eigen_core.config import DomainConfig, EndpointSection, PoolConfig, RunSection
from eigen_core.configio import Section, refuse_moved
from rollout.config import EpisodeConfig
from verifiers.config import VerifierConfig

TAU2_DOMAINS = ("airline", "retail", "telecom")

MOVED = {
    **{f"run.{k}": f"episode.{k}" for k in ("concurrency", "max_steps", "prompt")},
    **{f"run.{k}": f"eval.{k}" for k in ("trials", "tau2_cross_check")},
    **{f"tasks.{k}": f"eval.{k}" for k in ("source", "split", "max_tasks")},
    "tasks.pool_dir": "pool.dir",
}
"""Keys of the standalone eval's config before it shared the train config's vocabulary."""


class EvalSection(Section):
    """Which tasks are evaluated and how often; what every eval reports is pass^1..pass^trials."""

    split: str = "test"
    """Task split: a pool's split name (held-out: ``test``); tau²'s ``base``, ``train``, ``test``
    (telecom also ``small``, ``full``)."""
    max_tasks: int | None = Field(None, ge=1)
    """Evaluate the split's first this many tasks (None: all)."""
    trials: int = Field(4, ge=1)
    """n, episodes per task; pass^k is reported for k = 1..n."""
    seed: int = 1234
    """Seed of the trials (sent to endpoints that honour a seed); the same for every agent
    (common random numbers)."""


class EndpointEvalSection(EvalSection):
    """The standalone eval's ``eval`` section: also where the tasks come from."""

    source: Literal["tau2", "pool"] = "tau2"
    """tau²-bench's own task sets (airline, retail, telecom), or the task pool at ``pool.dir``
    (any domain, e.g. the quickstart's held-out shop tasks)."""
    tau2_cross_check: bool = True
    """For tau² domains, also score every trajectory with tau²'s own evaluator and record both
    rewards; the run fails loudly if they ever disagree."""


class EvalRunConfig(Section):
    """A standalone eval: tasks, the agent, the user simulator, the verifier, where results go."""

    run: RunSection = RunSection(out_dir="runs/eval")
    """Where per-trial records, results.json and the plot go (a rerun resumes), progress."""
    domain: DomainConfig = DomainConfig()
    """The domain whose tools and policy the agent gets."""
    episode: EpisodeConfig = EpisodeConfig(concurrency=8)
    """How episodes run: ``max_steps``, ``prompt``, ``concurrency``, ``user_patience``. tau² counts
    every message of every party against its limit (200 by default), so 50 of ours is roughly
    as generous. The parties are the ``agent`` and ``user`` sections (``episode.user`` is the
    train config's choice of user and is not read here)."""
    eval: EndpointEvalSection = EndpointEvalSection()
    """Which tasks, how many trials, the trials' seed."""
    pool: PoolConfig = PoolConfig()
    """The task pool, for ``eval.source: pool``."""
    agent: EndpointSection = EndpointSection()
    """The agent under test: ``kind: endpoint`` or ``checkpoint``."""
    user: EndpointSection = EndpointSection(kind="rules")
    """The user simulator: ``endpoint``, ``checkpoint`` or ``rules`` (tau² uses an LLM; ``rules``
    needs no model)."""
    verifier: VerifierConfig = VerifierConfig()
    """Reward components (tasks with their own reward basis, like tau²'s, use theirs)."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved(data, MOVED)

    @model_validator(mode="after")
    def _consistent(self) -> EvalRunConfig:
        if self.user.kind == "scripted":
            raise ValueError(
                "user.kind: the rule-based user simulator is 'rules' ('scripted' is synth's fake server)"
            )
        self.agent.require_kind("agent", "endpoint", "checkpoint")
        self.user.require_kind("user", "endpoint", "checkpoint", "rules")
        if self.eval.source == "tau2" and self.domain.name not in TAU2_DOMAINS:
            raise ValueError(f"eval.source 'tau2' needs a tau² domain, not {self.domain.name!r}")
        return self
