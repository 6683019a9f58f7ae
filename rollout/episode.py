"""The asyncio episode runner: agent ⇄ tool environment ⇄ user simulator, until a stop."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from eigen_core.contracts import Message, Task, Termination, ToolCall, Trajectory
from eigen_core.domain import Domain
from rollout.agents import Agent
from rollout.engine import ContextOverflow, EngineError
from rollout.user_sim import UserSimulator, is_stop

T = TypeVar("T")


def agent_context(domain: Domain, prompt: str = "full") -> tuple[str, list[dict[str, Any]]]:
    """The agent's system prompt and tool list under ``EpisodeConfig.prompt``."""
    if prompt == "full":
        return domain.policy, domain.tool_schemas()
    if prompt == "brief":
        return f"You are a {domain.name} customer service agent.", []
    raise ValueError(f"episode.prompt must be 'full' or 'brief', got {prompt!r}")


def agent_view(messages: list[Message]) -> list[Message]:
    """The conversation as the agent sees it: the user's own tool traffic (calls on their phone
    and the results) hidden, as in tau²; its text stays. Filtering is per message, so the view of
    a longer conversation extends the view of a shorter one (token-level agents rely on that)."""
    out = []
    caller = "assistant"  # tool results follow the message whose calls they answer
    for m in messages:
        if m.tool_calls:
            caller = m.role
        if m.role == "tool" and caller == "user":
            continue
        if m.role == "user" and m.tool_calls:
            if not (m.content or "").strip():
                continue
            m = m.model_copy(update={"tool_calls": None})
        out.append(m)
    return out


class _OutOfSteps(Exception):
    """The step budget ran out inside a user turn."""


class _Clock:
    """Accumulates seconds per party, so slow parties show up in trajectory timings."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {"agent": 0.0, "user": 0.0, "env": 0.0}

    async def timed(self, party: str, coro: Awaitable[T]) -> T:
        t0 = time.perf_counter()
        try:
            return await coro
        finally:
            self.totals[party] += time.perf_counter() - t0


class _Run:
    """One episode's state: the conversation, the tool environment, the step count, the clock."""

    def __init__(self, task: Task, domain: Domain, user: UserSimulator, max_steps: int, system: str):
        self.domain, self.user, self.max_steps = domain, user, max_steps
        self.env = domain.make_env(task)
        self.messages: list[Message] = [Message(role="system", content=system)]
        self.steps = 0
        self.clock = _Clock()

    async def run_calls(self, calls: list[ToolCall]) -> bool:
        """Execute calls in order, append their results; True if a terminal tool succeeded."""
        t0 = time.perf_counter()
        ended = False
        for call in calls:
            result = self.env.call(call)
            if inspect.isawaitable(result):  # remote tools (MCP, services) are async
                result = await result
            self.messages.append(result.to_message())
            terminal = call.requestor == "assistant" and call.name in self.domain.terminal_tools
            ended |= terminal and not result.error
        self.clock.totals["env"] += time.perf_counter() - t0
        return ended

    async def user_turn(self) -> bool:
        """The user's next message; True if it ends the episode. A user with tools of their own
        (tau² telecom's phone) may call them first; the results go back to the user, who speaks
        again. Each such round counts as a step."""
        while True:
            reply = await self.clock.timed("user", self.user.respond(self.messages))
            if reply.role != "user":
                raise ValueError(f"user simulator returned a {reply.role!r} message")
            if reply.tool_calls:
                calls = [c.model_copy(update={"requestor": "user"}) for c in reply.tool_calls]
                reply = reply.model_copy(update={"tool_calls": calls})
            self.messages.append(reply)
            if not reply.tool_calls or is_stop(reply):
                return is_stop(reply)
            await self.run_calls(reply.tool_calls)
            self.steps += 1
            if self.steps >= self.max_steps:
                raise _OutOfSteps

    async def agent_turn(self, agent: Agent, tools: list[dict[str, Any]]) -> Message:
        msg = await self.clock.timed("agent", agent.act(agent_view(self.messages), tools))
        if msg.role != "assistant":
            raise ValueError(f"agent returned a {msg.role!r} message")
        if any(c.requestor != "assistant" for c in msg.tool_calls or []):
            calls = [c.model_copy(update={"requestor": "assistant"}) for c in msg.tool_calls or []]
            msg = msg.model_copy(update={"tool_calls": calls})
        self.messages.append(msg)
        self.steps += 1
        return msg

    async def play(self, agent: Agent, tools: list[dict[str, Any]]) -> Termination:
        if await self.user_turn():
            return Termination.USER_STOP
        while self.steps < self.max_steps:
            msg = await self.agent_turn(agent, tools)
            if msg.tool_calls:
                if await self.run_calls(msg.tool_calls):
                    return Termination.AGENT_STOP
                continue
            if await self.user_turn():
                return Termination.USER_STOP
        return Termination.MAX_STEPS


async def run_episode(
    task: Task,
    domain: Domain,
    agent: Agent,
    user: UserSimulator,
    *,
    max_steps: int = 50,
    group_id: str = "",
    sample_index: int = 0,
    prompt: str = "full",
) -> Trajectory:
    """Run one episode. Never raises for agent, user or tool failures: they end the episode with
    ``termination == "error"`` (and ``error`` set) so one bad episode cannot crash a run. An
    engine that failed for good (``EngineError``) is raised: that is no outcome of the policy's,
    and a zero reward for it would train (or score) the policy on an outage.

    A step is one agent message, or one user message with tool calls (a user-side tool round);
    ``max_steps`` bounds them. Tool errors are observations. Agent tool calls are executed as the
    agent's, user tool calls as the user's (``ToolCall.requestor``).
    ``prompt`` chooses the agent's context (``agent_context``); the tools work either way.
    """
    t_start = time.perf_counter()
    system, tools = agent_context(domain, prompt)
    run = _Run(task, domain, user, max_steps, system)
    error = None
    try:
        termination = await run.play(agent, tools)
    except _OutOfSteps:
        termination = Termination.MAX_STEPS
    except ContextOverflow as e:
        termination, error = Termination.CONTEXT_OVERFLOW, str(e)
    except EngineError:  # the engine failed, not the policy: the caller reruns the episode or stops
        raise
    except Exception as e:  # any other failure of a party ends only this episode
        termination, error = Termination.ERROR, f"{type(e).__name__}: {e}"
    arrays = agent.transcript.arrays() if agent.transcript is not None else {}
    return Trajectory(
        task_id=task.id,
        group_id=group_id,
        sample_index=sample_index,
        messages=run.messages,
        **arrays,
        termination=termination,
        error=error,
        timings=dict(run.clock.totals, total=time.perf_counter() - t_start),
    )
