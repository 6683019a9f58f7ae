"""The config of a standalone eval run (``python -m eigen_jax.eval --config X.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eigen_core.configio import Section
from rollout.config import ChatEndpointSection, DomainConfig
from verifiers.config import VerifierConfig


class EvalTasks(Section):
    source: Literal["tau2", "pool"] = "tau2"
    """Where the tasks come from: tau²-bench's own task sets (airline, retail, telecom), or a task
    pool directory (any domain, e.g. the quickstart's held-out shop tasks)."""
    split: str = "test"
    """tau²: ``base``, ``train``, ``test`` (telecom also ``small``, ``full``); pool: its split name."""
    pool_dir: str = ""
    """Task pool directory, for ``source: pool``."""
    max_tasks: int | None = Field(None, ge=1)
    """Evaluate only the first N tasks (None: all)."""


class PartySection(ChatEndpointSection):
    """An agent or user simulator: an OpenAI-compatible chat endpoint, or a local checkpoint that
    the eval serves itself (``eigen_jax.serve`` in-process)."""

    kind: Literal["endpoint", "checkpoint", "scripted"] = "endpoint"
    """``endpoint``: ``url``; ``checkpoint``: ``checkpoint`` served locally; ``scripted``: the
    rule-based user simulator (users only)."""
    checkpoint: str = ""
    """HF directory (config.json + safetensors + tokenizer) for ``kind: checkpoint``."""
    tokenizer: str = ""
    """Tokenizer directory for ``kind: checkpoint`` when it is not in the checkpoint directory."""
    max_len: int | None = Field(None, ge=16)
    """``kind: checkpoint``: longest prompt + reply served (None: the model's context length)."""

    @model_validator(mode="after")
    def _needs(self) -> PartySection:
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ValueError("kind 'checkpoint' needs `checkpoint: <HF directory>`")
        return self


class EvalRunSection(Section):
    out_dir: str = "runs/eval"
    """Where per-trial JSONL, results.json and the plot go; a rerun resumes from what is there."""
    trials: int = Field(4, ge=1)
    """Trials per task (pass^1..pass^trials are reported)."""
    seed: int = 0
    """Seeds every trial (sent to endpoints that honour a seed)."""
    concurrency: int = Field(8, ge=1)
    """Episodes run at once."""
    max_steps: int = Field(50, ge=1)
    """Most agent messages (and user tool rounds) per episode, past which it ends with
    ``max_steps`` (reward 0). tau² counts every message of every party, tools included, against
    its limit (200 by default), so 50 of ours is roughly as generous."""
    prompt: Literal["full", "brief"] = "full"
    """The agent's context: the domain's policy and tool schemas (``full``), or the one-line
    prompt that tiny from-scratch models were trained with (``brief``; see ``episode.prompt``)."""
    tau2_cross_check: bool = True
    """For tau² domains, also score every trajectory with tau²'s own evaluator and record both
    rewards; the run fails loudly if they ever disagree."""
    progress: bool = True
    """Show a progress bar."""


class EvalRunConfig(Section):
    """A standalone eval: tasks, the agent, the user simulator, the verifier, where results go."""

    run: EvalRunSection = EvalRunSection()
    """Trials, seeds, concurrency, where results go."""
    domain: DomainConfig = DomainConfig()
    """The domain whose tools and policy the agent gets."""
    tasks: EvalTasks = EvalTasks()
    """Which tasks are evaluated."""
    agent: PartySection = PartySection()
    """The agent under test."""
    user: PartySection = PartySection(kind="scripted")
    """The user simulator (tau² uses an LLM; ``scripted`` needs no model)."""
    verifier: VerifierConfig = VerifierConfig()
    """Reward components (tasks with their own reward basis, like tau²'s, use theirs)."""

    @model_validator(mode="after")
    def _consistent(self) -> EvalRunConfig:
        if self.agent.kind == "scripted":
            raise ValueError("agent.kind: 'scripted' is for users; give the agent an endpoint or checkpoint")
        if self.tasks.source == "pool" and not self.tasks.pool_dir:
            raise ValueError("tasks.source 'pool' needs tasks.pool_dir")
        if self.tasks.source == "tau2" and self.domain.name not in ("airline", "retail", "telecom"):
            raise ValueError(f"tasks.source 'tau2' needs a tau² domain, not {self.domain.name!r}")
        return self
