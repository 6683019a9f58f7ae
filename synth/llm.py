"""Role clients over OpenAI-compatible chat endpoints, with a shared budget and JSON answers.

Every request (the synth roles' own and the rollout parties' through ``ChatAgent``/``ChatUser``)
goes through a ``MeteredEngine``: ``HTTPEngine``'s throttle, timeouts and retries, plus a charge
of calls and tokens to the run's ``Budget``, which refuses new calls once a cap is reached.
Structured answers are parsed from the reply's first JSON object (fenced or bare) and validated
by a pydantic model; a malformed answer is asked again with the error, ``json_retries`` times.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from eigen_core.contracts import Message
from rollout.http_engine import EngineError, HTTPEngine
from rollout.openai_format import to_openai

M = TypeVar("M", bound=BaseModel)


class BudgetExhausted(RuntimeError):
    """A call was refused because the run's call or token cap is spent."""


class MalformedOutput(ValueError):
    """A role's answer could not be parsed as the expected JSON document (after retries)."""


@dataclass
class Budget:
    """Calls and tokens spent per role, against optional caps for the whole run."""

    max_calls: int | None = None
    max_tokens: int | None = None
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def exhausted(self) -> str | None:
        """Why no further call may start (None: calls may start)."""
        if self.max_calls is not None and self.total_calls >= self.max_calls:
            return f"call budget spent ({self.total_calls} of {self.max_calls})"
        if self.max_tokens is not None and self.total_tokens >= self.max_tokens:
            return f"token budget spent ({self.total_tokens} of {self.max_tokens})"
        return None

    def charge(self, role: str, calls: int, tokens: int) -> None:
        self.calls[role] += calls
        self.tokens[role] += tokens

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(self.calls), "tokens": dict(self.tokens)}


def usage_tokens(answer: Any, body: dict | None) -> int:
    """Tokens an answer cost: its ``usage.total_tokens``, else an estimate (4 characters a
    token) from the request and the answer, so servers without usage still count."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        return usage["total_tokens"]
    return (len(json.dumps(body or {})) + len(json.dumps(answer or {}))) // 4


class MeteredEngine(HTTPEngine):
    """An ``HTTPEngine`` whose every request is charged to ``budget`` under ``role``."""

    def __init__(self, *args: Any, role: str, budget: Budget, **kw: Any):
        super().__init__(*args, **kw)
        self.role, self.budget = role, budget

    async def request(self, method: str, path: str, body: dict | None = None, **params: Any) -> Any:
        why = self.budget.exhausted()
        if why is not None:
            raise BudgetExhausted(why)
        try:
            answer = await super().request(method, path, body, **params)
        except EngineError:
            self.budget.charge(self.role, 1, 0)
            raise
        self.budget.charge(self.role, 1, usage_tokens(answer, body))
        return answer


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The first JSON object in ``text``: a fenced block's, or the first balanced ``{...}``.
    Raises ``MalformedOutput`` saying what was wrong."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start:])
    if not candidates:
        raise MalformedOutput("no JSON object in the answer")
    decoder = json.JSONDecoder()
    last = ""
    for c in candidates:
        c = c.strip()
        i = c.find("{")
        if i < 0:
            continue
        try:
            value, _ = decoder.raw_decode(c[i:])
        except json.JSONDecodeError as e:
            last = f"invalid JSON ({e.msg} at char {e.pos})"
            continue
        if isinstance(value, dict):
            return value
        last = f"expected a JSON object, got {type(value).__name__}"
    raise MalformedOutput(last or "no JSON object in the answer")


def _validation_summary(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class RoleClient:
    """One synth role (planner, synthesizer, judge, reflector) on one endpoint."""

    def __init__(
        self,
        engine: MeteredEngine,
        *,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        json_retries: int = 1,
        structured_output: bool = False,
    ):
        self.engine, self.temperature, self.max_tokens = engine, temperature, max_tokens
        self.json_retries, self.structured_output = json_retries, structured_output

    @property
    def role(self) -> str:
        return self.engine.role

    async def complete(
        self, messages: list[Message], seed: int | None = None, schema: type[BaseModel] | None = None
    ) -> str:
        """The assistant's text; with ``schema``, decoding is constrained to it (OpenAI
        ``response_format``, vLLM's structured outputs)."""
        body: dict[str, Any] = {
            "model": self.engine.model,
            "messages": [to_openai(m) for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
            }
        answer = await self.engine.request("POST", "/v1/chat/completions", body)
        try:
            content = answer["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise MalformedOutput(f"{self.role}: chat answer has no choices: {str(answer)[:200]}") from None
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    async def ask(self, system: str, user: str, model: type[M], seed: int | None = None) -> M:
        """Ask for one JSON document validated by ``model``; re-ask with the error on a malformed
        answer. Raises ``MalformedOutput`` after ``json_retries`` re-asks."""
        messages = [Message(role="system", content=system), Message(role="user", content=user)]
        error = ""
        for attempt in range(self.json_retries + 1):
            text = await self.complete(
                messages,
                None if seed is None else seed * 10 + attempt,
                model if self.structured_output else None,
            )
            try:
                return model.model_validate(extract_json(text))
            except MalformedOutput as e:
                error = str(e)
            except ValidationError as e:
                error = f"does not match the schema: {_validation_summary(e)}"
            messages += [
                Message(role="assistant", content=text),
                Message(
                    role="user",
                    content=f"Your answer {error}. Reply with exactly one JSON object following the schema.",
                ),
            ]
        raise MalformedOutput(f"{self.role}: answer {error} (after {self.json_retries + 1} tries)")
