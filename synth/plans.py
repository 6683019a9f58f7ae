"""Plan pairs: what a worker stream synthesizes (synthesis plan) and how its output is judged
(evaluation plan), plus the worker prompts that reflection rewrites.

Plans are structured, validated documents (an LLM writes them as JSON); ``overlap`` measures how
much two synthesis plans would produce the same tasks, so the planner's output and reflection's
rewrites can be checked for duplicates before any worker runs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from eigen_core.contracts import Contract

Tier = Literal["easy", "medium", "hard"]
Fault = Literal["task", "trajectory"]


class FailureType(Contract):
    """One entry of a failure taxonomy: a tag the trajectory judge may give a failed episode."""

    tag: str = Field(min_length=1, max_length=64)
    """Short snake_case label, e.g. ``missing_user_info``."""
    fault: Fault
    """Whose fault a failure of this type is: the task's (it is flawed: rejected) or the
    trajectory's (the agent failed a good task: the task stays)."""
    description: str = ""


DEFAULT_TAXONOMY = [
    FailureType(
        tag="underspecified_scenario", fault="task", description="the user lacks information the task needs"
    ),
    FailureType(
        tag="unreachable_goal",
        fault="task",
        description="the gold outcome contradicts the policy or the tools",
    ),
    FailureType(
        tag="checker_mismatch",
        fault="task",
        description="the checker judges something the scenario never asked",
    ),
    FailureType(tag="policy_violation", fault="trajectory", description="the agent broke a policy rule"),
    FailureType(
        tag="wrong_action", fault="trajectory", description="the agent called the wrong tool or arguments"
    ),
    FailureType(tag="missing_output", fault="trajectory", description="the agent never said what it had to"),
    FailureType(
        tag="episode_error", fault="trajectory", description="the episode ended by error or step limit"
    ),
]


class SynthesisPlan(Contract):
    """What kind of tasks a worker stream writes."""

    complexity: Tier
    tool_patterns: list[list[str]] = Field(min_length=1)
    """Tool-call sequences the tasks should exercise, e.g. ``[["get_order", "cancel_order"]]``."""
    user_style: str = Field(min_length=1)
    """How the simulated user behaves (terse, chatty, confused, adversarial...)."""
    target_entities: list[str] = Field(default_factory=list)
    """Entity kinds or states to target (``"pending orders"``, ``"gold members"``)."""
    notes: str = ""
    """Free-form guidance for the synthesizer."""

    @field_validator("tool_patterns")
    @classmethod
    def _non_empty_patterns(cls, v: list[list[str]]) -> list[list[str]]:
        if any(not p for p in v):
            raise ValueError("each tool pattern needs at least one tool")
        return v


class EvaluationPlan(Contract):
    """How the stream's tasks and trajectories are judged."""

    rubric: list[str] = Field(min_length=1)
    """What a good task of this plan satisfies (checked by the trajectory judge)."""
    failure_taxonomy: list[FailureType] = Field(default_factory=lambda: list(DEFAULT_TAXONOMY))

    @field_validator("failure_taxonomy")
    @classmethod
    def _unique_tags(cls, v: list[FailureType]) -> list[FailureType]:
        tags = [f.tag for f in v]
        if len(set(tags)) != len(tags):
            raise ValueError(f"failure_taxonomy tags must be unique, got {tags}")
        return v


class WorkerPrompts(Contract):
    """Instructions the stream's workers add to their role prompts (reflection appends to them)."""

    synthesizer: list[str] = Field(default_factory=list)
    """Guidelines for the task synthesizer."""
    judge: list[str] = Field(default_factory=list)
    """Guidelines for the trajectory judge."""


class PlanPair(Contract):
    """One worker stream's plans, at one version."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    version: int = 0
    parent: int | None = None
    """The version this one was rewritten from (None for the planner's first version)."""
    round: int = 0
    """The first round that runs this version."""
    synthesis: SynthesisPlan
    evaluation: EvaluationPlan
    prompts: WorkerPrompts = Field(default_factory=WorkerPrompts)
    rationale: str = ""
    """Why this version exists: the planner's or the reflector's explanation."""
    weight: float = Field(1.0, ge=0)
    """Share of the round's attempts this stream gets, relative to the others."""
    knobs: dict[str, float | int] = Field(default_factory=dict)
    """LLM-free mode: the procedural generator's settings this stream samples with."""


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def plan_features(p: SynthesisPlan) -> set[str]:
    """The features overlap compares: tier, each tool pattern, the user style's and the target
    entities' words."""
    feats = {f"tier:{p.complexity}"}
    feats |= {"pattern:" + ">".join(t) for t in p.tool_patterns}
    feats |= {f"style:{w}" for w in _words(p.user_style)}
    feats |= {f"entity:{w}" for e in p.target_entities for w in _words(e)}
    return feats


def overlap(a: SynthesisPlan, b: SynthesisPlan) -> float:
    """Jaccard similarity of the two plans' features, in [0, 1]. Plans of another tier with
    disjoint tool patterns score low even if the prose is alike."""
    fa, fb = plan_features(a), plan_features(b)
    return len(fa & fb) / len(fa | fb) if fa | fb else 1.0


def select_distinct(
    candidates: list[SynthesisPlan], threshold: float, keep: list[SynthesisPlan] = ()
) -> tuple[list[int], list[tuple[int, int | str, float]]]:
    """Indices of candidates that overlap less than ``threshold`` with every plan kept before
    them (``keep`` first, then earlier candidates), and ``(i, with, overlap)`` for the rejected
    ones (``with``: index of the earlier candidate, or ``"kept:j"``)."""
    chosen: list[int] = []
    rejected: list[tuple[int, int | str, float]] = []
    for i, c in enumerate(candidates):
        worst: tuple[int | str, float] | None = None
        for j, k in enumerate(keep):
            o = overlap(c, k)
            if o >= threshold and (worst is None or o > worst[1]):
                worst = (f"kept:{j}", o)
        for j in chosen:
            o = overlap(c, candidates[j])
            if o >= threshold and (worst is None or o > worst[1]):
                worst = (j, o)
        if worst is None:
            chosen.append(i)
        else:
            rejected.append((i, worst[0], round(worst[1], 3)))
    return chosen, rejected


_READ_PREFIXES = ("get_", "find_", "list_", "search_", "calculate")
_STYLES = ("terse", "chatty and off-topic", "confused about details", "impatient", "polite but vague")
_TIERS: tuple[Tier, ...] = ("easy", "medium", "hard")


def seed_plans(tools: list[str], n: int, threshold: float, keep: list[SynthesisPlan] = ()) -> list[PlanPair]:
    """Up to ``n`` rule-made plan pairs over a domain's tool names, overlapping less than
    ``threshold`` with ``keep`` and with each other: the fallback when a (weak) planner writes
    no usable plan, so a run still has streams to reflect on. Reads and writes are told apart by
    name (``get_``/``find_``/``list_``/``search_``/``calculate`` read; ``transfer_*`` is left
    out): a heuristic, good enough for starting plans that reflection then rewrites."""
    reads = [t for t in tools if t.startswith(_READ_PREFIXES)]
    writes = [t for t in tools if not t.startswith(_READ_PREFIXES) and not t.startswith("transfer")]
    lookup = [next((t for t in reads if t.startswith("get_")), reads[0])] if reads else []
    candidates: list[SynthesisPlan] = []
    for i in range(max(len(writes), 1) * len(_TIERS)):
        tier = _TIERS[i % len(_TIERS)]
        first = writes[(i // len(_TIERS)) % len(writes)] if writes else None
        second = writes[(i // len(_TIERS) + 1) % len(writes)] if len(writes) > 1 else None
        pattern = lookup + ([first] if first else []) or tools[:1]
        if tier == "medium" and second:
            pattern = [*pattern, second]
        style = _STYLES[i % len(_STYLES)]
        candidates.append(
            SynthesisPlan(
                complexity=tier,
                tool_patterns=[pattern],
                user_style=style,
                target_entities=[f"records {first} applies to" if first else "existing records"],
                notes="hard: include one request the policy forbids; the agent must refuse it"
                if tier == "hard"
                else "",
            )
        )
    chosen, _ = select_distinct(candidates, threshold, list(keep))
    return [
        PlanPair(
            id=f"seed-{candidates[i].complexity}-{i}",
            synthesis=candidates[i],
            evaluation=EvaluationPlan(
                rubric=[
                    "the scenario gives the user every fact the gold actions need",
                    "the checker tests exactly what the scenario asks",
                ]
            ),
            rationale="seed plan (rule-made from the tool names)",
        )
        for i in chosen[:n]
    ]
