"""Agent and user simulator behind any OpenAI-compatible *chat* endpoint (vLLM, ``eigen_jax.serve``,
a hosted API): messages and tool schemas in, a message with text and/or tool calls out.

For evaluation, where the text round trip is fine; training uses the token-level ``LMAgent``.
The user simulator sees the conversation from its side (``user_view``) and, in domains where the
user has tools of their own (tau² telecom's phone), its own tool calls and their results.
"""

from __future__ import annotations

import json
from typing import Any

from eigen_core.contracts import Message, Task, UserScenario
from eigen_core.domain import Domain
from rollout.agents import Agent
from rollout.http_engine import EngineError, HTTPEngine
from rollout.openai_format import from_openai, to_openai
from rollout.user_sim import GREETING, UserContext, user_view
from rollout.workflow import AgentFactory, UserFactory


async def chat(
    client: HTTPEngine,
    messages: list[Message],
    tools: list[dict[str, Any]],
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    extra: dict[str, Any] | None = None,
) -> Message:
    """One ``/v1/chat/completions`` call; the reply as our ``Message`` (role as returned)."""
    body: dict[str, Any] = {
        "model": client.model,
        "messages": [to_openai(m) for m in messages],
        "temperature": temperature,
        "max_tokens": max_tokens,
        **(extra or {}),
    }
    if tools:
        body["tools"] = tools
    if seed is not None:
        body["seed"] = seed
    out = await client.request("POST", "/v1/chat/completions", body)
    try:
        message = out["choices"][0].get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EngineError(f"{client.base_url}: chat answer has no choices: {str(out)[:300]}") from None
    try:
        return from_openai(message, where=f"{client.base_url} choices[0].message")
    except ValueError as e:
        # The model's own output (say, a tool call without a name) is a flagged turn the episode
        # goes on from, as for parse_assistant; only a broken envelope is the endpoint's fault.
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else json.dumps(message, default=str)[:4000]
        return Message(role="assistant", content=text, malformed=str(e))


class ChatAgent(Agent):
    """The agent: the domain's policy as system prompt, its tools, the conversation so far."""

    def __init__(
        self,
        client: HTTPEngine,
        *,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ):
        self.client, self.temperature, self.max_tokens = client, temperature, max_tokens
        self.seed, self.extra, self._turn = seed, extra, 0

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        self._turn += 1
        seed = None if self.seed is None else self.seed * 1000 + self._turn
        reply = await chat(
            self.client,
            messages,
            tools,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=seed,
            extra=self.extra,
        )
        return reply.model_copy(update={"role": "assistant"})


class ChatUser:
    """The user simulator: instructions (``user_system_prompt``, or the domain's own prompt, e.g.
    tau²'s), stop tokens to end, and the user-side tools when the domain has them."""

    def __init__(
        self,
        client: HTTPEngine,
        scenario: UserScenario,
        *,
        tools: list[dict[str, Any]] | None = None,
        system_prompt: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ):
        self.client, self.scenario, self.tools = client, scenario, tools or []
        self.system_prompt = system_prompt
        self.temperature, self.max_tokens, self.seed, self.extra = temperature, max_tokens, seed, extra
        self._turn = 0

    async def respond(self, messages: list[Message]) -> Message:
        self._turn += 1
        # the agent's greeting opens, as tau²'s orchestrator does (in every domain here)
        view = user_view(self.scenario, messages, UserContext(self.system_prompt, self.tools, GREETING))
        seed = None if self.seed is None else self.seed * 1000 + 500 + self._turn
        reply = await chat(
            self.client,
            view,
            self.tools,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=seed,
            extra=self.extra,
        )
        calls = reply.tool_calls if self.tools else None
        return Message(role="user", content=reply.content or ("" if calls else "..."), tool_calls=calls)


def chat_agent(client: HTTPEngine, *, temperature: float, max_tokens: int) -> AgentFactory:
    """Party factory (``rollout.workflow``): a ``ChatAgent`` per episode, seeded by it."""
    return lambda task, seed: ChatAgent(client, temperature=temperature, max_tokens=max_tokens, seed=seed)


def chat_user(client: HTTPEngine, domain: Domain, *, temperature: float, max_tokens: int) -> UserFactory:
    """Party factory: a ``ChatUser`` per episode with the domain's user tools and, where the
    domain has one (tau²), its own user-simulator prompt."""
    tools = domain.user_tool_schemas() if hasattr(domain, "user_tool_schemas") else []
    own_prompt = getattr(domain, "user_system_prompt", None)

    def make(task: Task, seed: int) -> ChatUser:
        return ChatUser(
            client,
            task.scenario,
            tools=tools,
            system_prompt=own_prompt(task) if own_prompt is not None else None,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )

    return make
