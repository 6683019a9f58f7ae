"""Config sections owned by ``synth``: the procedural generator, the task pool, and the data
engine (``python -m synth.run``): its endpoints per role, rounds, budget and curriculum."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eigen_core.config import EndpointSection
from eigen_core.configio import Section


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


def _role(kind: str = "endpoint") -> EndpointSection:
    return EndpointSection(kind=kind, max_tokens=2048)  # plans and tasks are long JSON answers


class EndpointsConfig(Section):
    """The model behind each role (``EndpointSection``; kinds ``endpoint``, ``scripted``, ``rules``).
    Roles naming the same URL share one throttle (``concurrency``, ``rate_per_s``)."""

    planner: EndpointSection = Field(default_factory=_role)
    """Writes the first plan pairs."""
    synthesizer: EndpointSection = Field(default_factory=_role)
    """Writes tasks from a plan."""
    judge: EndpointSection = Field(default_factory=lambda: _role("rules"))
    """Tags failed rollouts as the task's or the trajectory's fault."""
    user: EndpointSection = Field(default_factory=lambda: _role("rules"))
    """The user simulator of the verification rollouts."""
    assistant: EndpointSection = Field(default_factory=_role)
    """The agent of the verification rollouts (in LLM-free mode: the policy being taught)."""
    reflector: EndpointSection = Field(default_factory=_role)
    """Rewrites the plans from the round's failures."""


class SynthSection(Section):
    mode: Literal["llm", "procedural"] = "llm"
    """``llm``: planner, synthesizer and reflector are models. ``procedural``: the domain's
    procedural generator synthesizes and reflection tunes its knobs from the policy's pass rates
    (a curriculum; no model but the policy)."""
    out_dir: str = "runs/synth"
    """Plans, the attempt journal, lineage and reports; a rerun resumes from what is there."""
    seed: int = 0
    """Seeds every request and generator; with deterministic endpoints a run is reproducible."""
    rounds: int = Field(3, ge=1)
    """Reflection rounds (K)."""
    plans: int = Field(4, ge=1)
    """Plan pairs (worker streams) the planner writes (N)."""
    attempts_per_round: int = Field(32, ge=1)
    """Tasks proposed per round, split over the streams by their weights."""
    concurrency: int = Field(8, ge=1)
    """Attempts in flight at once."""
    json_retries: int = Field(1, ge=0)
    """Re-asks after a malformed JSON answer, before the attempt is rejected."""
    planner_fallback: bool = True
    """When the planner writes fewer usable plans than ``plans`` (malformed answers, overlaps),
    fill in rule-made seed plans (``synth.plans.seed_plans``) instead of stopping; the report's
    ``planner`` entry counts them and keeps the planner's errors."""
    overlap_threshold: float = Field(0.6, gt=0, le=1)
    """Plans whose feature overlap (``synth.plans.overlap``) reaches this are duplicates."""
    dedupe_threshold: float = Field(0.9, gt=0, le=1)
    """Tasks whose similarity (``synth.dedupe``) to an accepted one reaches this are dropped."""
    rollouts_per_task: int = Field(1, ge=1)
    """Verification rollouts per task (procedural mode: the group that measures pass rates)."""
    max_calls: int | None = Field(None, ge=1)
    """Budget: most model calls in the run (all roles); None: no cap."""
    max_tokens: int | None = Field(None, ge=1)
    """Budget: most tokens (prompt + completion, as servers report) in the run; None: no cap."""
    db_sample: int = Field(6, ge=1)
    """Records per DB table shown to the planner and synthesizer."""
    world_customers: int = Field(24, ge=1)
    """Shop: customers in the shared world DB that synthesized tasks start from."""
    test_fraction: float = Field(0.0, ge=0, le=1)
    """Share of accepted tasks put in the ``test`` split (by a hash of the task id)."""
    progress: bool = True
    """Show a progress bar."""


class CurriculumConfig(Section):
    """LLM-free mode: how reflection moves the procedural generator's knobs."""

    target_low: float = Field(0.2, ge=0, le=1)
    """A stream whose tasks the policy solves less often than this gets easier."""
    target_high: float = Field(0.8, ge=0, le=1)
    """A stream whose tasks the policy solves more often than this gets harder."""
    saturated_weight: float = Field(0.1, ge=0, le=1)
    """Weight of a task every sample solved or none did, against 1 for a frontier task; a
    stream's share of the next round follows its tasks' mean weight."""
    max_actions_cap: int = Field(6, ge=1)
    """Hardest setting the curriculum may reach (requests per task)."""
    keep_saturated: bool = True
    """Put tasks every sample solved or none did into the pool too (with their pass rate)."""


class ImportSource(Section):
    """One source of tasks for the ``import`` stage."""

    kind: Literal["tau2", "areal_rl", "areal_sft"]
    """``tau2``: tau²-bench's own tasks of ``domain`` in ``split``; ``areal_rl``: the RL rows of
    the released AReaL-SEA data (``tau2_rl_train.jsonl``: one tau² task per line on a DB
    snapshot named by its ``db_path``); ``areal_sft``: its SFT rows (``tau2_sft_train.jsonl``:
    one assistant turn in its context per line), into the pool's dialogues (``<pool.dir>/sft``)."""
    domain: str | None = None
    """tau²: the domain (required). areal_rl: import only this domain's rows (None: every row;
    a row's domain is read from its ``db_path``, else from its user instructions)."""
    split: str = "train"
    """tau²: its split to import (``train``, ``test``, ``base``; telecom also ``small``, ``full``)."""
    as_split: str | None = None
    """The pool split the tasks go to (None: ``split`` for tau², ``train`` for areal_rl)."""
    path: str | None = None
    """areal_rl: the JSONL file of RL rows (required)."""
    database_dir: str | None = None
    """areal_rl: where the rows' DB files are (None: ``tau2_rl_database/`` next to ``path``)."""
    keep_failed: bool = False
    """areal_sft: also keep turns whose ``metadata.correct`` is 0 (dropped by default, and
    counted in the report)."""
    thinking: Literal["keep", "drop"] = "keep"
    """areal_sft: an answer's ``thinking`` as a ``<think>`` block before its content (Qwen3's
    format), or left out."""
    test_fraction: float = Field(0.0, ge=0, le=1)
    """areal_sft: the share of source dialogues (whole, by a hash of ``source_dialog_id``) put in
    the ``test`` split, for the SFT stage's held-out loss."""
    limit: int | None = Field(None, ge=1)
    """Only the source's first ``limit`` tasks (None: all); the same ones on a rerun."""

    @model_validator(mode="after")
    def _needs(self) -> ImportSource:
        if self.kind == "tau2" and self.domain is None:
            raise ValueError("a tau2 source needs 'domain' (airline, retail or telecom)")
        if self.kind.startswith("areal") and not self.path:
            raise ValueError(f"an {self.kind} source needs 'path' (its JSONL file)")
        return self


class ImportSection(Section):
    """The ``import`` stage (``python -m synth.importer``): tasks from outside into the pool."""

    sources: list[ImportSource] = Field(default_factory=list)
    """What to import, in order (ids already in the pool are skipped, so a rerun adds nothing)."""
    check_gold: bool = True
    """Replay every imported task's gold actions on its start DB and report the tasks whose
    replay raises a tool error (they are kept: tau²'s own golds do this too, and the gold DB is
    whatever the actions achieve)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A row that cannot be imported (invalid JSON or task, unknown domain, a missing DB file, a
    reward basis we cannot score): ``error`` stops naming file and line; ``skip`` goes on and
    lists every skipped row with its reason in the report."""
