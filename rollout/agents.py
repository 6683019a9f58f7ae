"""The ``Agent`` interface and the model-free agents used to test tasks and verifiers.

``OracleAgent`` plays a task's gold actions the way a good agent would: it asks for what only the
user knows, makes one call per turn, then states the required outputs. ``IdleAgent`` does
nothing. Both are deterministic and work for any domain.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from eigen_core.contracts import Action, Message, Task, ToolCall
from eigen_core.routes import ExpertRoutes


class TokenTranscript:
    """Token ids with the per-token arrays a ``Trajectory`` carries (what a token-level agent
    sampled, and under which policy version)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []
        self._routes: list[np.ndarray | None] = []  # per token: [layers, k] ids, None: unknown
        self._routes_like: ExpertRoutes | None = None  # layout of the recorded routes

    def add_context(self, ids: list[int]) -> None:
        self.tokens += ids
        self.loss_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.versions += [-1] * len(ids)
        self._routes += [None] * len(ids)

    def add_generated(
        self, ids: list[int], logprobs: list[float], version: int, routes: ExpertRoutes | None = None
    ) -> None:
        """Append a completion; ``routes`` (``Generation.routes``) covers the last
        ``routes.tokens`` tokens of the transcript after it: the context the engine just
        prefilled, then the completion."""
        self.tokens += ids
        self.loss_mask += [1] * len(ids)
        self.logprobs += list(logprobs)
        self.versions += [version] * len(ids)
        self._routes += [None] * len(ids)
        if routes is None or routes.tokens == 0:
            return
        if routes.tokens > len(self.tokens):
            raise ValueError(f"routes cover {routes.tokens} tokens, the transcript has {len(self.tokens)}")
        self._routes_like = routes
        taken = routes.array()
        for i, (row, ok) in enumerate(zip(taken, routes.known(taken), strict=True)):
            if ok:  # an unknown row (a prefix-cache hit, vLLM's last token) keeps what an earlier call saw
                self._routes[len(self.tokens) - routes.tokens + i] = row

    def routes_known(self) -> int:
        """How many leading tokens have known routes (what the next call need not fetch)."""
        return next((i for i, r in enumerate(self._routes) if r is None), len(self._routes))

    def routes(self) -> ExpertRoutes | None:
        """The recorded routes of every token (None when the engine recorded none)."""
        like = self._routes_like
        if like is None:
            return None
        empty = np.full((like.layers, like.k), -1, np.int32)
        rows = [empty if r is None else r for r in self._routes]
        return ExpertRoutes.from_array(np.stack(rows) if rows else empty[None, :0], like.width)

    def arrays(self) -> dict[str, Any]:
        """The ``Trajectory`` fields of this transcript."""
        return dict(
            tokens=list(self.tokens),
            loss_mask=list(self.loss_mask),
            behaviour_logprobs=list(self.logprobs),
            versions=list(self.versions),
            routes=self.routes(),
        )

    def __len__(self) -> int:
        return len(self.tokens)


@runtime_checkable
class Agent(Protocol):
    """One episode's agent. Stateful per episode; create a fresh one per episode.

    The episode runner calls ``act`` with the conversation as the agent sees it; each call's
    messages are the previous call's, then the message that call returned, then what happened
    since (tool results, the user's reply). Agents may rely on that (``LMAgent`` checks it).
    """

    transcript: TokenTranscript | None = None
    """Token-level agents: the exact sampled transcript, which becomes the trajectory's token
    arrays. None for agents that work on messages only (scripted, chat-endpoint agents)."""

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        """The next assistant message (text and/or tool calls) given the conversation so far."""
        ...


class OracleAgent(Agent):
    """Follows a fixed action list (by default the task's gold actions)."""

    def __init__(self, task: Task, actions: list[Action] | None = None, ask_known_info: bool = True):
        self.task = task
        acts = task.gold_actions if actions is None else actions
        self.actions = [a for a in acts if a.requestor == "assistant"]
        known = task.scenario.known_info
        self._to_ask = list(known) if ask_known_info and isinstance(known, dict) else []
        self._next = 0
        self._finished = False

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        if self._to_ask:
            key = self._to_ask.pop(0)
            return Message(role="assistant", content=f"Could you please tell me your {key}?")
        if self._next < len(self.actions):
            a = self.actions[self._next]
            self._next += 1
            call = ToolCall(id=f"call_{self._next}", name=a.name, arguments=dict(a.arguments))
            return Message(role="assistant", tool_calls=[call])
        if not self._finished:
            self._finished = True
            outputs = "; ".join(self.task.required_outputs)
            return Message(
                role="assistant", content="All done." + (f" Details: {outputs}." if outputs else "")
            )
        return Message(role="assistant", content="Thank you for contacting us. Goodbye.")


class IdleAgent(Agent):
    """Never calls a tool: the do-nothing floor of a benchmark."""

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        return Message(role="assistant", content="I'm sorry, I can't help with that.")
