"""Domain and ToolEnv interfaces, plus a generic tool environment over a pydantic database.

A domain's tools are plain functions ``fn(db, args) -> result`` with a pydantic model for their
arguments; ``ModelToolEnv`` turns every way a call can go wrong (unknown tool, arguments that
are not JSON, missing or mistyped arguments, a domain rule) into an error observation.
Write tools must validate everything before they mutate: a rejected call leaves the DB as it was.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from eigen_core.contracts import Action, Message, Task, ToolCall, ToolResult


class ToolError(Exception):
    """Raised by a tool for a domain-level refusal; becomes an error observation."""


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_state(state: Any) -> str:
    """sha256 of the canonical JSON of a DB state (as tau² hashes its DBs)."""
    return hashlib.sha256(canonical_json(state).encode()).hexdigest()


@runtime_checkable
class ToolEnv(Protocol):
    """A live tool environment for one episode."""

    def call(self, call: ToolCall) -> ToolResult:
        """Execute one call; never raises for bad calls, returns an error observation instead."""
        ...

    def state(self) -> dict[str, Any]:
        """The DB as JSON-compatible data."""
        ...

    def state_hash(self) -> str:
        """sha256 of ``canonical_json(state())``."""
        ...


@runtime_checkable
class Domain(Protocol):
    """A tool-use domain: policy, tools, database, and environments for tasks."""

    name: str
    policy: str
    """The agent's system prompt: the rules it must follow."""
    write_tools: frozenset[str]
    """Tools that may change the DB (dropping one must change the outcome)."""
    terminal_tools: frozenset[str]
    """Tools whose call ends the episode (e.g. transfer to a human)."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """OpenAI function-calling schemas of the agent's tools."""
        ...

    def make_env(self, task: Task) -> ToolEnv:
        """A fresh environment holding the task's initial DB."""
        ...


@dataclass(frozen=True)
class Tool:
    """A tool implementation: typed arguments, a function over the DB, and its schema."""

    name: str
    description: str
    args: type[BaseModel]
    fn: Callable[[Any, Any], Any]
    """``fn(db, args_instance) -> JSON-able result``; raise ``ToolError`` to refuse."""
    writes: bool = False
    terminal: bool = False

    def schema(self) -> dict[str, Any]:
        params = self.args.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


def _format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "arguments"
        if err["type"] == "missing":
            parts.append(f"missing argument '{loc}'")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unexpected argument '{loc}'")
        else:
            parts.append(f"argument '{loc}': {err['msg']}")
    return "; ".join(parts)


class ModelToolEnv:
    """``ToolEnv`` over a pydantic DB model and a table of ``Tool``s."""

    def __init__(self, db: BaseModel, tools: Mapping[str, Tool]):
        self.db = db
        self.tools = dict(tools)

    def call(self, call: ToolCall) -> ToolResult:
        def error(msg: str) -> ToolResult:
            return ToolResult(tool_call_id=call.id, name=call.name, content=f"Error: {msg}", error=True)

        if call.requestor != "assistant":
            return error("this domain has no tools on the user's side")
        tool = self.tools.get(call.name)
        if tool is None:
            return error(f"unknown tool '{call.name}'. Available: {', '.join(sorted(self.tools))}")
        try:
            raw = call.parsed_arguments()
        except ValueError as e:
            return error(str(e))
        try:
            args = tool.args.model_validate(raw)
        except ValidationError as e:
            return error(_format_validation_error(e))
        try:
            result = tool.fn(self.db, args)
        except ToolError as e:
            return error(str(e))
        content = result if isinstance(result, str) else canonical_json(result)
        return ToolResult(tool_call_id=call.id, name=call.name, content=content)

    def state(self) -> dict[str, Any]:
        return self.db.model_dump(mode="json")

    def state_hash(self) -> str:
        return hash_state(self.state())


def action_to_call(action: Action, index: int) -> ToolCall:
    """A gold action as a tool call with a deterministic id."""
    return ToolCall(
        id=f"gold_{index}",
        name=action.name,
        arguments=copy.deepcopy(action.arguments),
        requestor=action.requestor,
    )


def replay(domain: Domain, task: Task, calls: list[ToolCall]) -> tuple[ToolEnv, list[ToolResult]]:
    """Run ``calls`` in a fresh env from the task's initial state; return the env and results."""
    env = domain.make_env(task)
    return env, [env.call(c) for c in calls]


class ReplayMismatch(ValueError):
    """A conversation's tool call returned, when replayed, something other than what the
    conversation recorded: it did not happen in this task's environment."""


def same_output(replayed: str, recorded: str) -> bool:
    """tau²'s comparison of a replayed tool output with the recorded one: equal as JSON values
    where a side parses as JSON, else as text."""

    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    return value(replayed) == value(recorded)


def _recorded_outputs(messages: list[Message]) -> list[tuple[ToolCall, str | None]]:
    """Every tool call of ``messages`` (everyone's, in order) with the output recorded for it:
    the tool message with its id among those that directly follow the call (None: unanswered)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in ("assistant", "user") or not m.tool_calls:
            continue
        answers: dict[str, str] = {}
        for reply in messages[i + 1 :]:
            if reply.role != "tool":
                break
            answers.setdefault(reply.tool_call_id or "", reply.content or "")
        out += [(c, answers.get(c.id)) for c in m.tool_calls]
    return out


def replay_conversation(domain: Domain, task: Task, messages: list[Message]) -> ToolEnv:
    """The environment after the tool calls of ``messages``, replayed from the task's initial
    state as tau²'s evaluator rebuilds it (``Environment.set_state``): a call whose output
    differs from the recorded one raises ``ReplayMismatch`` (a non-deterministic tool, another
    start DB, an edited transcript), and the environment then settles (``settle``, where it has
    one: tau²'s last device sync, which a failed last call would otherwise skip)."""
    env = domain.make_env(task)
    for n, (call, recorded) in enumerate(_recorded_outputs(messages)):
        result = env.call(call)
        if recorded is not None and not same_output(result.content, recorded):
            raise ReplayMismatch(
                f"task {task.id}: tool call {n} ({call.name}) returned {result.content[:200]!r} on replay, "
                f"but the conversation recorded {recorded[:200]!r}: it did not happen in this task's "
                "environment (tau²'s evaluator refuses it too)"
            )
    settle = getattr(env, "settle", None)
    if settle is not None:
        settle()
    return env
