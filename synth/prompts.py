"""Prompts of the synth roles, and the JSON documents they answer with.

Each system prompt opens with ``ROLE: <name>`` and each user prompt carries its inputs as one
JSON block after ``INPUT:``: plain for a model to read, and exact for the scripted endpoint
(``synth.scripted``) and for anyone auditing a run's lineage.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from eigen_core.contracts import Contract, Task, Trajectory
from synth.plans import EvaluationPlan, Fault, PlanPair, SynthesisPlan, WorkerPrompts
from synth.synthesis import TaskDraft

ROLES = ("planner", "synthesizer", "judge", "user", "assistant", "reflector")


class PlanDraft(Contract):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    synthesis: SynthesisPlan
    evaluation: EvaluationPlan
    prompts: WorkerPrompts = Field(default_factory=WorkerPrompts)
    rationale: str = ""


class PlannerOutput(Contract):
    plans: list[PlanDraft] = Field(min_length=1)


class Verdict(Contract):
    """The trajectory judge's call on a failed episode."""

    fault: Fault
    tag: str
    evidence: str = ""


class ReflectionOutput(Contract):
    """A plan pair rewritten by the reflector."""

    synthesis: SynthesisPlan
    evaluation: EvaluationPlan
    prompts: WorkerPrompts
    rationale: str = ""


def _schema(model: type[Contract]) -> str:
    return json.dumps(model.model_json_schema(), separators=(",", ":"))


def _user(instructions: str, payload: dict[str, Any]) -> str:
    return f"{instructions}\nINPUT:\n{json.dumps(payload, indent=1, sort_keys=True)}"


def planner_prompt(ctx: dict[str, Any], n: int, avoid: list[SynthesisPlan]) -> tuple[str, str]:
    system = (
        "ROLE: planner\nYou design synthetic-task streams for training a customer-service agent. "
        f"Write {n} plan pairs that do not overlap: each targets a different complexity tier, tool "
        "pattern, user style or set of entities. Answer with one JSON object following this schema: "
        + _schema(PlannerOutput)
    )
    payload = {"n": n, "domain": ctx, "avoid": [p.model_dump(mode="json") for p in avoid]}
    return system, _user(f"Write {n} plan pairs for this domain.", payload)


def synthesizer_prompt(plan: PlanPair, ctx: dict[str, Any], rnd: int, attempt: int) -> tuple[str, str]:
    rules = [
        "Use only tools from the tool list, with arguments their schemas accept.",
        "Reference only entities that appear in the DB sample.",
        "The checker is Python (standard library only) defining check(initial_db, final_db, messages) "
        "-> bool or (bool, reason); it must pass on the gold outcome and fail when the task is not done.",
        *plan.prompts.synthesizer,
    ]
    system = (
        "ROLE: synthesizer\nYou write one task for a customer-service agent: the user's scenario, the "
        "gold tool calls a correct agent makes, what it must tell the user, and a checker.\n"
        + "\n".join(f"- {r}" for r in rules)
        + "\nAnswer with one JSON object following this schema: "
        + _schema(TaskDraft)
    )
    payload = {
        "plan_id": plan.id,
        "version": plan.version,
        "round": rnd,
        "attempt": attempt,
        "synthesis_plan": plan.synthesis.model_dump(mode="json"),
        "guidelines": plan.prompts.synthesizer,
        "domain": ctx,
    }
    return system, _user("Write one task following the synthesis plan.", payload)


def judge_prompt(plan: PlanPair, task: Task, traj: Trajectory, reasons: dict[str, str]) -> tuple[str, str]:
    system = (
        "ROLE: judge\nA simulated user and an agent played a synthesized task and the agent failed. "
        "Decide whose fault it is: the task's (it is flawed: ambiguous, underspecified, unreachable, "
        "or its checker judges something else) or the trajectory's (the agent failed a good task). "
        "Tag it with one tag of the failure taxonomy.\n"
        + "\n".join(f"- {g}" for g in plan.prompts.judge)
        + "\nAnswer with one JSON object following this schema: "
        + _schema(Verdict)
    )
    payload = {
        "plan_id": plan.id,
        "rubric": plan.evaluation.rubric,
        "failure_taxonomy": [f.model_dump(mode="json") for f in plan.evaluation.failure_taxonomy],
        "task": {
            "scenario": task.scenario.model_dump(mode="json"),
            "gold_actions": [
                a.model_dump(mode="json", include={"name", "arguments"}) for a in task.gold_actions
            ],
            "required_outputs": task.required_outputs,
        },
        "conversation": [
            {"role": m.role, "content": m.content, "tool_calls": [c.name for c in m.tool_calls or []]}
            for m in traj.messages
            if m.role != "system"
        ],
        "termination": traj.termination.value,
        "failed_checks": reasons,
    }
    return system, _user("Judge this failed episode.", payload)


def reflector_prompt(plan: PlanPair, stats: dict[str, Any], others: list[SynthesisPlan]) -> tuple[str, str]:
    system = (
        "ROLE: reflector\nYou improve a synthetic-task stream from its last round: read its "
        "rejection reasons and tagged failures, then rewrite the synthesis plan, the evaluation "
        "plan and the worker guidelines so that more of its tasks are valid and useful. Keep it "
        "distinct from the other streams' plans. Answer with one JSON object following this "
        "schema: " + _schema(ReflectionOutput)
    )
    payload = {
        "plan": plan.model_dump(mode="json", include={"id", "version", "synthesis", "evaluation", "prompts"}),
        "round_stats": stats,
        "other_plans": [p.model_dump(mode="json") for p in others],
    }
    return system, _user("Rewrite this plan pair.", payload)


def parse_input(user_prompt: str) -> dict[str, Any]:
    """The JSON block of a prompt built here (for the scripted endpoint and tests)."""
    return json.loads(user_prompt.split("INPUT:\n", 1)[1])
