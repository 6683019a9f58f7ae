"""The data contracts that cross process boundaries: messages, tasks, trajectories.

Every model here is pydantic with ``extra="forbid"`` and round-trips losslessly through JSON
(``Model.model_validate_json(m.model_dump_json()) == m``), including non-finite floats, which
appear as behaviour logprobs of ``-inf``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eigen_core.routes import ExpertRoutes

Role = Literal["system", "user", "assistant", "tool"]


class Contract(BaseModel):
    """Base for all contracts: strict keys, JSON-safe infinities."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class ToolCall(Contract):
    """One function call requested by the assistant (OpenAI chat shape)."""

    id: str
    """Call id; the tool message answering it carries the same ``tool_call_id``."""
    name: str
    """Tool name as the model wrote it (may name a tool that does not exist)."""
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    """Parsed arguments, or the raw text when the model's arguments were not a JSON object."""
    requestor: Literal["assistant", "user"] = "assistant"
    """Whose tool it is: the agent's, or the user's own (tau² telecom's phone); tau²'s field."""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raises ``ValueError`` with a readable reason if impossible."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError as e:
            raise ValueError(f"arguments are not valid JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(value, dict):
            raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
        return value


class Message(Contract):
    """A chat message. Assistant messages carry text and/or tool calls; tool messages answer one.
    User messages may carry tool calls too: tools on the user's side (tau² telecom's device)."""

    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    """Set on ``role == "tool"`` messages: the id of the call this message answers."""
    malformed: str | None = None
    """Set when a model's output could not be parsed (e.g. a broken ``<tool_call>``): why.
    ``content`` then holds the raw text."""

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls and self.role not in ("assistant", "user"):
            raise ValueError(f"only assistant and user messages carry tool_calls, not {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError(f"tool_call_id is only valid on tool messages, not {self.role!r}")
        return self


class ToolResult(Contract):
    """What a ``ToolEnv`` returns for one call. Errors are observations, not exceptions."""

    tool_call_id: str
    name: str
    content: str
    error: bool = False

    def to_message(self) -> Message:
        return Message(role="tool", content=self.content, tool_call_id=self.tool_call_id)


class Action(Contract):
    """A tool call in a task's gold (or forbidden) action list."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    requestor: Literal["assistant", "user"] = "assistant"
    """Who performs it: the agent, or (tau² telecom) the user on their own device. For an
    initial-state action: whose environment the function runs on."""
    compare_args: list[str] | None = None
    """Arguments a call must match for this gold action to count as done (tau²'s rule); None:
    every argument the call passes."""
    id: str | None = None
    """The source's action id (tau²'s ``action_id``), kept for lossless export."""
    info: str | None = None
    """Free-text note from the source."""

    def matches(self, call: ToolCall) -> bool:
        """Whether ``call`` performs this action: same name and equal compared arguments (tau²'s
        ``Action.compare_with_tool_call``; arguments a call omits count as absent on both sides)."""
        if call.name != self.name or not isinstance(call.arguments, dict):
            return False
        keys = list(call.arguments) if self.compare_args is None else self.compare_args
        if not keys:
            return True
        mine = {k: v for k, v in self.arguments.items() if k in keys}
        theirs = {k: v for k, v in call.arguments.items() if k in keys}
        return mine == theirs


class EnvAssertion(Contract):
    """A check on the final environment: ``name(**arguments)`` run on the agent's or the user's
    side must return ``assert_value`` (tau² telecom's ``env_assertions``)."""

    requestor: Literal["assistant", "user"] = "assistant"
    """Whose environment the function runs on (tau²'s ``env_type``)."""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    assert_value: bool = True
    message: str | None = None
    """Shown when the assertion fails."""


class UserScenario(Contract):
    """What the user simulator is told: who it is, what it wants, what it knows."""

    persona: str = ""
    reason_for_call: str
    """The request, in the user's words; the scripted simulator opens with it verbatim."""
    known_info: dict[str, str] | str = Field(default_factory=dict)
    """Facts only the user holds (e.g. ``{"customer id": "C0042"}``): given when asked. Free text
    for sources that write it so (tau²)."""
    unknown_info: list[str] | str = Field(default_factory=list)
    """Things the user does not know and must not invent (a list, or free text)."""
    task_instructions: str = ""
    """Free-form guidance for an LM user simulator (tone, when to stop, what not to reveal)."""


class InitialState(Contract):
    """The DB a task starts from: a named reference DB and/or inline data, then init actions."""

    reference: str | None = None
    """Name of a DB the domain provides (e.g. tau² airline's ``db.json``); None for inline."""
    data: dict[str, Any] | None = None
    """The whole DB inline (procedural tasks), or a patch merged into the reference."""
    user_data: dict[str, Any] | None = None
    """A patch merged into the user-side DB, for domains with one (tau² telecom's phone)."""
    actions: list[Action] = Field(default_factory=list)
    """Environment functions run after loading, on the ``requestor``'s side (tau²'s
    ``initialization_actions``)."""


class Provenance(Contract):
    """Where a task came from, so yields can be traced back to plans and generators."""

    generator: str
    plan_id: str | None = None
    round: int | None = None
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


RewardComponent = Literal["db", "outputs", "actions", "env_assertions", "checker"]
"""What a reward can require: ``db`` (final DB hash equals the gold replay's), ``outputs`` (the
agent said each required output), ``actions`` (each gold action was performed), ``env_assertions``
(each holds on the final environment), ``checker`` (the task's sandboxed checker passes)."""


class Task(Contract):
    """One task: scenario, start state, what a correct agent does and says, how to check it."""

    id: str
    domain: str
    split: str = "train"
    """Data split ("train", "test", or a source's own split name)."""
    scenario: UserScenario
    initial_state: InitialState
    gold_actions: list[Action] = Field(default_factory=list)
    required_outputs: list[str] = Field(default_factory=list)
    """Strings the agent must say (case-insensitive substring of its text, commas removed)."""
    forbidden_actions: list[Action] = Field(default_factory=list)
    """Writes the user asks for but the policy forbids; negative tests for checkers."""
    reward_basis: list[RewardComponent] | None = None
    """What a reward of 1 requires for this task (tau²'s ``reward_basis``); None: the verifier's
    configured components."""
    env_assertions: list[EnvAssertion] = Field(default_factory=list)
    """Checks on the final environment (the ``env_assertions`` component)."""
    nl_assertions: list[str] = Field(default_factory=list)
    """Natural-language outcome statements (tau²'s; carried for judges, not scored here)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Source fields carried for lossless export but not used (tau²'s ``description``, ``ticket``)."""
    checker: str | None = None
    """Python source (standard library only) defining ``check(initial_db, final_db, messages)`` ->
    ``bool`` or ``(bool, reason)``, over JSON data; run only in the verifiers' sandbox."""
    provenance: Provenance = Field(default_factory=lambda: Provenance(generator="unknown"))


class Dialogue(Contract):
    """One SFT example from outside the episode runner (the AReaL-SEA SFT rows): a conversation
    whose trained role's turns (or only its last message) carry the loss."""

    id: str
    domain: str
    split: str = "train"
    messages: list[Message]
    """The conversation, system prompt first (it may describe the tools itself)."""
    learn: Literal["all", "last"] = "all"
    """Which assistant turns carry loss: all, or only the last message (a turn-level row: its
    context's earlier turns are another row's target)."""
    tools: list[dict[str, Any]] = Field(default_factory=list)
    """Tool schemas rendered into the system prompt (empty: the prompt lists them itself)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Source fields (correctness, reward, the source dialogue's id and turn)."""
    provenance: Provenance = Field(default_factory=lambda: Provenance(generator="unknown"))


class Termination(StrEnum):
    """Why an episode ended. Only ``USER_STOP`` and ``AGENT_STOP`` can earn reward (as tau²)."""

    USER_STOP = "user_stop"
    AGENT_STOP = "agent_stop"
    MAX_STEPS = "max_steps"
    CONTEXT_OVERFLOW = "context_overflow"
    ERROR = "error"


class RewardInfo(Contract):
    """A reward and the components it was built from."""

    reward: float
    components: dict[str, float] = Field(default_factory=dict)
    """Per check (``db``, ``outputs``, ``checker``...): 1.0 pass, 0.0 fail."""
    reasons: dict[str, str] = Field(default_factory=dict)
    """Why a component failed, for humans and for synth's failure tagging."""


class Trajectory(Contract):
    """One episode, token-exact: what was sampled is what gets trained."""

    task_id: str
    group_id: str = ""
    sample_index: int = 0
    messages: list[Message]
    tokens: list[int] = Field(default_factory=list)
    loss_mask: list[int] = Field(default_factory=list)
    """1 on tokens the policy generated, 0 elsewhere (prompt, user, tool tokens)."""
    behaviour_logprobs: list[float] = Field(default_factory=list)
    """Logprob of each token under the policy that sampled it (0.0 where not generated)."""
    versions: list[int] = Field(default_factory=list)
    """Policy version that generated each token (-1 where not generated)."""
    routes: ExpertRoutes | None = None
    """MoE policies: the experts the engine routed each token to (``eigen_core.routes``; tokens
    it never computed are unknown), for routing replay; None for dense policies."""
    reward_info: RewardInfo | None = None
    """The verifier's verdict (None until scored): the one place a trajectory's reward lives."""
    termination: Termination
    error: str | None = None
    """What went wrong when ``termination`` is ``error`` (the exception, one line)."""
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds spent per party (``agent``, ``user``, ``env``) and in ``total``."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_reward(cls, data: Any) -> Any:
        # Trajectories written before the reward lived only in ``reward_info`` also carry a
        # top-level ``reward``: read it into ``reward_info`` (refusing a contradiction).
        if isinstance(data, dict) and "reward" in data:
            data = dict(data)
            reward, info = data.pop("reward"), data.get("reward_info")
            if info is None and reward is not None:
                data["reward_info"] = {"reward": reward}
            elif info is not None and reward is not None:
                theirs = info.reward if isinstance(info, RewardInfo) else info.get("reward")
                if theirs != reward:
                    raise ValueError(f"reward {reward} contradicts reward_info.reward {theirs}")
        return data

    @property
    def reward(self) -> float | None:
        """``reward_info.reward``, or None before scoring."""
        return None if self.reward_info is None else self.reward_info.reward

    def scored(self, info: RewardInfo) -> Trajectory:
        """This trajectory with the verifier's verdict attached."""
        return self.model_copy(update={"reward_info": info})

    @model_validator(mode="after")
    def _check_token_arrays(self) -> Trajectory:
        n = len(self.tokens)
        for name in ("loss_mask", "behaviour_logprobs", "versions"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, tokens has {n}")
        if self.routes is not None and self.routes.tokens != n:
            raise ValueError(f"routes cover {self.routes.tokens} tokens, tokens has {n}")
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError("loss_mask entries must be 0 or 1")
        return self

    def tool_calls(self, roles: tuple[str, ...] = ("assistant", "user")) -> list[ToolCall]:
        """Tool calls made by ``roles`` (by default everyone's), in order, as a replay would
        execute them."""
        return [c for m in self.messages if m.role in roles for c in (m.tool_calls or [])]
