"""The OpenAI request fields ``eigen_jax.serve`` implements, and its server-sent-event answers.

Pure functions, no JAX. Every field a client may send is listed per route with the values that
mean "nothing asked for"; a field we do not implement, sent with any other value, is refused
with a 400 naming it — never ignored, so a client never receives silently different behaviour
(``n: 2`` with one choice, ``stop: [...]`` with text past the stop, ``stream: true`` with a
plain body).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MAX_N = 16
"""Most choices per request (``n``)."""


class BadRequest(ValueError):
    """A request the server will not serve; the message names the field."""


_ANY = object()  # any value is implemented
# Fields implemented with any value, and fields accepted only at their no-op values.
_SHARED_IMPLEMENTED = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop_token_ids", "n", "stream",
    "stream_options", "user", "skip_special_tokens",
}  # fmt: skip
_SHARED_NOOP: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "min_tokens": (None, 0),
    "min_p": (None, 0, 0.0),
    "include_stop_str_in_output": (None, True),  # the stop token is always in the output
    "ignore_eos": (None, False),
}
_ROUTES: dict[str, tuple[set[str], dict[str, tuple[Any, ...]]]] = {
    "completions": (
        {"prompt", "logprobs", "return_token_ids", "routed_experts_prompt_start"},
        {"echo": (None, False), "best_of": (None, 1), "suffix": (None, "")},
    ),
    "chat": (
        {"messages", "tools", "max_completion_tokens", "logprobs", "response_format"},
        {
            "tool_choice": (None, "auto"),
            "parallel_tool_calls": (None, True),
            "top_logprobs": (None, 0),
            "chat_template_kwargs": (None, {}),
        },
    ),
}


def check_fields(body: dict[str, Any], route: str) -> None:
    """Refuse any field of ``body`` that ``route`` (``completions`` | ``chat``) does not implement."""
    implemented, noop = _ROUTES[route]
    noop = {**_SHARED_NOOP, **noop}
    for key, value in body.items():
        if key in implemented or key in _SHARED_IMPLEMENTED:
            continue
        if key in noop:
            if any((value == v and type(value) is type(v)) or value is v for v in noop[key]):
                continue
            raise BadRequest(
                f"{key}={json.dumps(value)[:80]} is not supported by eigen_jax.serve (accepted: "
                f"{', '.join(json.dumps(v) for v in noop[key])}); serve the model with vLLM, or omit it"
            )
        if value is not None:
            raise BadRequest(
                f"unknown request field {key!r} (eigen_jax.serve refuses what it does not implement)"
            )
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N):
        raise BadRequest(f"n must be an integer from 1 to {MAX_N}, not {json.dumps(n)[:40]}")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise BadRequest("stream_options: only include_usage is supported")
        if opts.get("continuous_usage_stats"):
            raise BadRequest("stream_options.continuous_usage_stats is not supported")
        if not body.get("stream"):
            raise BadRequest("stream_options is only allowed with stream: true")


def sse_events(answer: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    """A finished answer as OpenAI's stream of chunks, ``data: ...`` lines ending in ``[DONE]``.

    The sampler produces a whole completion at once, so each choice streams as one content chunk
    (chat: role, content, tool calls, then the finish reason) — what a streaming client reads,
    without token-by-token latency."""
    chat = answer["object"] == "chat.completion"
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer["created"],
        "model": answer["model"],
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

    for ch in answer["choices"]:
        i = ch["index"]
        if chat:
            msg = ch["message"]
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            if msg.get("content"):
                delta: dict[str, Any] = {"content": msg["content"]}
                if "logprobs" in ch:
                    yield event(
                        [{"index": i, "delta": delta, "logprobs": ch["logprobs"], "finish_reason": None}]
                    )
                else:
                    yield event([{"index": i, "delta": delta, "finish_reason": None}])
            calls = [{"index": k, **c} for k, c in enumerate(msg.get("tool_calls") or [])]
            if calls:
                yield event([{"index": i, "delta": {"tool_calls": calls}, "finish_reason": None}])
            yield event([{"index": i, "delta": {}, "finish_reason": ch["finish_reason"]}])
        else:
            yield event([{**ch, "finish_reason": None}])
            yield event([{"index": i, "text": "", "finish_reason": ch["finish_reason"]}])
    if include_usage:
        yield event([], usage=answer["usage"])
    yield b"data: [DONE]\n\n"
