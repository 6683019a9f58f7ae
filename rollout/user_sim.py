"""The ``UserSimulator`` interface and a scripted simulator driven by the task's scenario."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from eigen_core.contracts import Message, Task, UserScenario

STOP_TOKENS = ("###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###")
"""Tokens by which a user simulator ends the conversation (tau²'s)."""


def is_stop(message: Message) -> bool:
    return any(t in (message.content or "") for t in STOP_TOKENS)


@runtime_checkable
class UserSimulator(Protocol):
    """Plays the customer. Sees the conversation from the agent's side; speaks first."""

    async def respond(self, messages: list[Message]) -> Message:
        """The next user message; one containing a stop token ends the episode."""
        ...


def user_system_prompt(scenario: UserScenario) -> str:
    """The user-simulator model's instructions: who it is, why it calls, what it knows and what it
    does not, and how to end (shared by SFT of the user model and its use in episodes)."""
    lines = [
        "You are a customer talking to a support agent. Write only your next message, in plain text.",
        f"Why you are calling: {scenario.reason_for_call}",
    ]
    if scenario.persona:
        lines.append(f"Persona: {scenario.persona}")
    known, unknown = scenario.known_info, scenario.unknown_info
    if known:
        text = known if isinstance(known, str) else "; ".join(f"{k}: {v}" for k, v in known.items())
        lines.append(f"You know: {text}")
    if unknown:
        lines.append("You do not know: " + (unknown if isinstance(unknown, str) else ", ".join(unknown)))
    if scenario.task_instructions:
        lines.append(f"Instructions: {scenario.task_instructions}")
    lines.append(f"When your request is settled (or cannot be), end with {STOP_TOKENS[0]}.")
    return "\n".join(lines)


GREETING = "Hi! How can I help you today?"
"""The agent's fixed first message in tau² (its orchestrator's ``DEFAULT_FIRST_AGENT_MESSAGE``)."""


@dataclass(frozen=True)
class UserContext:
    """What a user-simulator model is given besides the conversation, in a domain."""

    system: str | None = None
    """Its system prompt (None: ``user_system_prompt`` of the scenario)."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    """Tools on the user's side (tau² telecom's phone)."""
    greeting: str | None = None
    """The agent's opening line, first in every view of the conversation (tau²'s orchestrator
    greets, and the greeting stays in the history)."""


def user_context(domain: Any, task: Task) -> UserContext:
    """The user simulator's context in ``domain``: the domain's own prompt, tools and greeting
    where it has them (tau²: its user-simulator prompt, telecom's phone tools, the agent's
    greeting), ours otherwise. SFT of the user model and its use in episodes both read it."""
    own = getattr(domain, "user_system_prompt", None)
    tools = domain.user_tool_schemas() if hasattr(domain, "user_tool_schemas") else []
    if own is None:
        return UserContext(tools=tools)
    return UserContext(system=own(task), tools=tools, greeting=GREETING)


def user_view(
    scenario: UserScenario, messages: list[Message], ctx: UserContext | None = None
) -> list[Message]:
    """The conversation as a user-simulator model sees it: its instructions as the system
    message, its own turns (and its own tool calls) as ``assistant``, the results of its tools as
    ``tool``, the agent's text as ``user``; the agent's tool traffic hidden. With a greeting in
    ``ctx``, the conversation opens with it, as the first agent message of tau²'s histories."""
    ctx = ctx or UserContext()
    out = [Message(role="system", content=ctx.system or user_system_prompt(scenario))]
    if ctx.greeting:
        out.append(Message(role="user", content=ctx.greeting))
    caller = "assistant"
    for m in messages:
        if m.tool_calls:
            caller = m.role
        if m.role == "user":
            text = m.content if m.tool_calls else (m.content or "")
            out.append(Message(role="assistant", content=text, tool_calls=m.tool_calls))
        elif m.role == "assistant" and m.content:
            out.append(Message(role="user", content=m.content))
        elif m.role == "tool" and caller == "user":
            out.append(m)
    return out


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


class ScriptedUser:
    """Deterministic user: opens with ``reason_for_call``; answers questions about its
    ``known_info``; says it does not know ``unknown_info``; otherwise considers the matter settled
    and stops. Gives up (stops) after ``patience`` questions it cannot answer."""

    def __init__(self, scenario: UserScenario, patience: int = 3):
        self.scenario = scenario
        self.patience = patience
        self._unanswerable = 0
        self._told_all = False

    async def respond(self, messages: list[Message]) -> Message:
        if not any(m.role == "user" for m in messages):
            return Message(role="user", content=self.scenario.reason_for_call)
        last = next((m for m in reversed(messages) if m.role == "assistant"), None)
        text = (last.content or "") if last else ""
        if "?" in text:
            said = _norm(text)
            known, unknown_info = self.scenario.known_info, self.scenario.unknown_info
            if isinstance(known, str):  # free-text facts (tau²): no keys to match, tell them all once
                if known and not self._told_all:
                    self._told_all = True
                    return Message(role="user", content=known)
                known = {}
            answers = [f"My {k} is {v}." for k, v in known.items() if _norm(k) in said]
            if answers:
                return Message(role="user", content=" ".join(answers))
            unknown_list = [unknown_info] if isinstance(unknown_info, str) else unknown_info
            unknown = [u for u in unknown_list if u and _norm(u) in said]
            if unknown and self._unanswerable < self.patience:
                self._unanswerable += 1
                return Message(role="user", content=f"Sorry, I don't know my {unknown[0]}.")
        return Message(role="user", content="Thanks, that's all. ###STOP###")
