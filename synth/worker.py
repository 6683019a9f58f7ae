"""One attempt of a worker stream: synthesize a task, verify it, roll it out, verify the
trajectories. Every way an attempt can fail ends as an ``AttemptRecord`` with coded reasons;
only ``BudgetExhausted`` escapes (the attempt is then not recorded and runs again on resume).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from eigen_core.contracts import Contract, Dialogue, Provenance, RewardInfo, Task, Termination, Trajectory
from rollout.agents import Agent
from rollout.episode import agent_context, agent_view
from rollout.http_engine import EngineError
from rollout.user_sim import UserSimulator
from rollout.workflow import ScoredEpisodes
from synth.context import DomainContext
from synth.llm import BudgetExhausted, MalformedOutput, RoleClient
from synth.plans import PlanPair
from synth.prompts import Verdict, judge_prompt, synthesizer_prompt
from synth.seeding import hash_int
from synth.synthesis import TaskDraft, draft_to_task, ground
from synth.validate import Rejection, check_task
from verifiers.reward import Verifier
from verifiers.sandbox import Sandbox

Stage = Literal["synthesis", "verification", "dedupe", "trajectory"]


class Reason(Contract):
    code: str
    detail: str = ""


class RolloutSummary(Contract):
    rewards: list[float] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list)
    """One per failed episode: whose fault, tagged."""

    @property
    def pass_rate(self) -> float | None:
        return sum(self.rewards) / len(self.rewards) if self.rewards else None


class AttemptRecord(Contract):
    """The outcome of one attempt, as journaled (``journal.jsonl``)."""

    key: str
    round: int
    plan_id: str
    plan_version: int
    attempt: int
    accepted: bool
    stage: Stage | None = None
    """Where a rejected attempt stopped (None when accepted)."""
    reasons: list[Reason] = Field(default_factory=list)
    task_id: str | None = None
    task: Task | None = None
    """The accepted task, in full: resume re-publishes it if the pool lost it."""
    rollout: RolloutSummary | None = None
    dialogues: list[Dialogue] = Field(default_factory=list)
    """The accepted task's passing rollouts, in the agent's view: SFT data the engine publishes
    to the pool's dialogues (``sft_*.data: imported``)."""
    seconds: float = 0.0


Synthesize = Callable[[PlanPair, int, int, str], Awaitable[Task | list[Rejection]]]
"""``(plan, round, attempt, task_id) -> Task or rejections``."""


@dataclass
class WorkerEnv:
    """What attempts share: the domain, the stage implementations, the verifiers."""

    ctx: DomainContext
    synthesize: Synthesize
    make_agent: Callable[[Task, int], Agent]
    make_user: Callable[[Task, int], UserSimulator]
    sandbox: Sandbox
    verifier: Verifier
    judge: RoleClient | None
    rollouts: int = 1
    max_steps: int = 50
    prompt: str = "full"
    """The agent's context (``EpisodeConfig.prompt``)."""
    seed: int = 0


def llm_synthesizer(client: RoleClient, ctx: DomainContext, db_sample: int, seed: int) -> Synthesize:
    """Synthesis by a model: the plan, the tools, the policy and a DB sample in; a ``TaskDraft``
    out, grounded in the DB."""

    async def synthesize(plan: PlanPair, rnd: int, attempt: int, task_id: str) -> Task | list[Rejection]:
        sample_seed = hash_int(f"{seed}:{plan.id}:{rnd}:{attempt}")
        system, user = synthesizer_prompt(plan, ctx.brief(db_sample, sample_seed), rnd, attempt)
        draft = await client.ask(system, user, TaskDraft, seed=sample_seed % 2**31)
        rejections = ground(draft, ctx)
        if rejections:
            return rejections
        prov = Provenance(
            generator=f"synth/llm:{client.engine.model}",
            plan_id=plan.id,
            round=rnd,
            seed=seed,
            params={"plan_version": plan.version, "attempt": attempt},
        )
        return draft_to_task(draft, ctx, task_id, prov)

    return synthesize


def rule_verdict(info: RewardInfo, traj: Trajectory) -> Verdict:
    """Tagging without a judge model: the failed component names the trajectory's fault."""
    if traj.termination not in (Termination.USER_STOP, Termination.AGENT_STOP):
        return Verdict(fault="trajectory", tag="episode_error", evidence=f"ended by {traj.termination.value}")
    failed = [k for k, v in info.components.items() if v < 1]
    tag = "missing_output" if failed == ["outputs"] else "wrong_action"
    return Verdict(
        fault="trajectory", tag=tag, evidence="; ".join(f"{k}: {info.reasons.get(k, '')}" for k in failed)
    )


async def _judge(env: WorkerEnv, plan: PlanPair, task: Task, traj: Trajectory, info: RewardInfo) -> Verdict:
    if env.judge is None:
        return rule_verdict(info, traj)
    system, user = judge_prompt(plan, task, traj, info.reasons)
    verdict = await env.judge.ask(
        system, user, Verdict, seed=hash_int(f"judge:{task.id}:{traj.sample_index}") % 2**31
    )
    known = {f.tag: f.fault for f in plan.evaluation.failure_taxonomy}
    if verdict.tag not in known:
        return verdict.model_copy(update={"evidence": f"(tag not in the taxonomy) {verdict.evidence}"})
    return verdict


async def _roll_out(
    env: WorkerEnv, plan: PlanPair, task: Task, summary: RolloutSummary
) -> list[tuple[int, Trajectory]]:
    """``env.rollouts`` episodes of ``task``: rewards and (for failures) verdicts go into
    ``summary``; returns the passing ``(k, trajectory)`` pairs. An endpoint that failed for good
    raises ``EngineError``."""
    workflow = ScoredEpisodes(
        env.ctx.domain,
        agent=env.make_agent,
        user=env.make_user,
        score=env.verifier.score,
        max_steps=env.max_steps,
        prompt=env.prompt,
    )
    passed: list[tuple[int, Trajectory]] = []
    for k in range(env.rollouts):
        seed = hash_int(f"{env.seed}:{task.id}:{k}") % 2**31
        traj = await workflow.run(task, seed, task.id, k)
        if traj.termination == Termination.ERROR and (traj.error or "").startswith("BudgetExhausted"):
            raise BudgetExhausted(traj.error)  # the episode runner caught it: not the task's fault
        info = traj.reward_info
        assert info is not None
        summary.rewards.append(info.reward)
        if info.reward >= 1:
            passed.append((k, traj))
        if info.reward < 1:
            try:
                summary.verdicts.append(await _judge(env, plan, task, traj, info))
            except (MalformedOutput, EngineError) as e:
                summary.verdicts.append(Verdict(fault="trajectory", tag="unjudged", evidence=str(e)[:200]))
    return passed


async def run_attempt(
    env: WorkerEnv,
    plan: PlanPair,
    rnd: int,
    attempt: int,
    task_id: str,
    is_duplicate: Callable[[Task], str | None],
) -> AttemptRecord:
    """Run one attempt through the four stages (plus a dedupe check before the rollouts)."""
    t0 = time.perf_counter()
    base: dict[str, Any] = dict(
        key=attempt_key(plan.id, rnd, attempt),
        round=rnd,
        plan_id=plan.id,
        plan_version=plan.version,
        attempt=attempt,
    )

    def reject(stage: Stage, reasons: list[Rejection | Reason], **kw: Any) -> AttemptRecord:
        rs = [Reason(code=r.code, detail=r.detail) for r in reasons]
        return AttemptRecord(
            **base, accepted=False, stage=stage, reasons=rs, seconds=time.perf_counter() - t0, **kw
        )

    try:
        made = await env.synthesize(plan, rnd, attempt, task_id)
    except MalformedOutput as e:
        return reject("synthesis", [Reason(code="malformed_output", detail=str(e))])
    except EngineError as e:
        return reject("synthesis", [Reason(code="endpoint_error", detail=str(e)[:300])])
    if isinstance(made, list):
        return reject("synthesis", made)
    task = made

    problems = await asyncio.to_thread(check_task, task, env.ctx.domain, env.sandbox)
    if problems:
        return reject("verification", problems, task_id=task.id)
    dup = is_duplicate(task)
    if dup is not None:
        return reject("dedupe", [Reason(code="near_duplicate", detail=dup)], task_id=task.id)

    summary = RolloutSummary()
    try:
        passed = await _roll_out(env, plan, task, summary)
    except EngineError as e:  # an endpoint failed for good: no verdict on the task either way
        reason = Reason(code="endpoint_error", detail=str(e)[:300])
        return reject("trajectory", [reason], task_id=task.id, rollout=summary)
    task_faults = [v for v in summary.verdicts if v.fault == "task"]
    if task_faults:
        reasons = [Reason(code="task_fault", detail=f"{v.tag}: {v.evidence}") for v in task_faults]
        return reject("trajectory", reasons, task_id=task.id, rollout=summary)
    params = {**task.provenance.params, "pass_rate": summary.pass_rate}
    task = task.model_copy(update={"provenance": task.provenance.model_copy(update={"params": params})})
    tools = agent_context(env.ctx.domain, env.prompt)[1]
    dialogues = [rollout_dialogue(task, k, traj, tools) for k, traj in passed]
    return AttemptRecord(
        **base, accepted=True, task_id=task.id, task=task, rollout=summary, dialogues=dialogues,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip


def rollout_dialogue(task: Task, k: int, traj: Trajectory, tools: list[dict[str, Any]]) -> Dialogue:
    """Rollout ``k`` of ``task`` as an agent SFT dialogue: what the agent saw and said (the user's
    own tool traffic hidden, as in episodes), every agent turn trained."""
    return Dialogue(
        id=f"{task.id}:rollout{k}",
        domain=task.domain,
        split=task.split,
        messages=agent_view(traj.messages),
        tools=tools,
        provenance=Provenance(generator="synth", plan_id=task.provenance.plan_id, round=task.provenance.round,
                              params={"task_id": task.id, "rollout": k}),
    )  # fmt: skip


def attempt_key(plan_id: str, rnd: int, attempt: int) -> str:
    return f"r{rnd}/{plan_id}/a{attempt}"
