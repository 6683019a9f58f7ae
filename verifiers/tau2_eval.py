"""Our trajectories scored by tau²-bench's own evaluator (``evaluate_simulation``), for reward
parity checks and for reporting numbers that mean what they mean on the tau² leaderboard.

Conversion: system messages are dropped (tau² keeps none in a simulation); assistant and user
messages keep text and tool calls (``requestor`` set by who called); tool messages take the
requestor of the call they answer. A call whose arguments were not a JSON object never reached a
tool (our environment answered with an error and changed nothing); tau²'s types cannot hold it,
so it is left out together with its answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from eigen_core.contracts import Message, RewardInfo, Task, Termination, Trajectory
from eigen_core.domains.tau2 import tau2_domain, to_tau2
from eigen_core.domains.tau2._import import tau2_module
from rollout.workflow import ScoreFn

_TERMINATION = {
    Termination.USER_STOP: "user_stop",
    Termination.AGENT_STOP: "agent_stop",
    Termination.MAX_STEPS: "max_steps",
    Termination.CONTEXT_OVERFLOW: "agent_error",
    Termination.ERROR: "agent_error",
}


def to_tau2_messages(messages: list[Message]) -> list[Any]:
    """Our messages as tau²'s ``Message`` union (see the module docstring)."""
    msg = tau2_module("data_model.message")
    out: list[Any] = []
    requestor_of: dict[str, str] = {}
    dropped: set[str] = set()
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            if m.tool_call_id in dropped:
                continue
            requestor = requestor_of.get(m.tool_call_id or "", "assistant")
            out.append(
                msg.ToolMessage(id=m.tool_call_id, role="tool", content=m.content, requestor=requestor)
            )
            continue
        calls = []
        for c in m.tool_calls or []:
            if not isinstance(c.arguments, dict):
                dropped.add(c.id)
                continue
            requestor_of[c.id] = m.role
            calls.append(msg.ToolCall(id=c.id, name=c.name, arguments=c.arguments, requestor=m.role))
        cls = msg.AssistantMessage if m.role == "assistant" else msg.UserMessage
        out.append(cls(role=m.role, content=m.content, tool_calls=calls or None))
    return out


def to_tau2_simulation(traj: Trajectory) -> Any:
    """A ``tau2.data_model.simulation.SimulationRun`` holding the trajectory."""
    sim = tau2_module("data_model.simulation")
    now = dt.datetime.now().isoformat()
    return sim.SimulationRun(
        id=f"{traj.task_id}/{traj.group_id}/{traj.sample_index}",
        task_id=traj.task_id,
        start_time=now,
        end_time=now,
        duration=float(traj.timings.get("total", 0.0)),
        termination_reason=_TERMINATION[traj.termination],
        messages=to_tau2_messages(traj.messages),
    )


def tau2_reward(task: Task, traj: Trajectory, domain: str | None = None) -> Any:
    """tau²'s ``RewardInfo`` for ``traj`` on ``task`` (evaluation type ``all``, not solo); a task
    on a DB snapshot is evaluated on that snapshot (``Tau2Domain.registry_name``)."""
    ev = tau2_module("evaluator.evaluator")
    name = tau2_domain(domain or task.domain).registry_name(task)
    return ev.evaluate_simulation(
        simulation=to_tau2_simulation(traj),
        task=to_tau2(task),
        evaluation_type=ev.EvaluationType.ALL,
        solo_mode=False,
        domain=name,
    )


def with_tau2_cross_check(score: ScoreFn) -> ScoreFn:
    """``score`` that also runs tau²'s own evaluator, its reward as component ``tau2``."""

    async def both(task: Task, traj: Trajectory) -> RewardInfo:
        info = await score(task, traj)
        theirs = float((await asyncio.to_thread(tau2_reward, task, traj)).reward)
        return info.model_copy(update={"components": {**info.components, "tau2": theirs}})

    return both
