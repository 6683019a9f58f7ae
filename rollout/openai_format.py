"""Our ``Message`` <-> OpenAI chat-completions message dicts (tool-call arguments as JSON strings)."""

from __future__ import annotations

import json
from typing import Any

from eigen_core.contracts import Message, ToolCall


def to_openai(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments),
                },
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def from_openai(d: dict[str, Any], where: str = "message") -> Message:
    """Raises ``ValueError`` naming ``where`` and the field when ``d`` is not a chat message."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    calls = []
    raw_calls = d.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise ValueError(f"{where}.tool_calls: expected a list, got {type(raw_calls).__name__}")
    for i, c in enumerate(raw_calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"{where}.tool_calls[{i}]: needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                parsed = json.loads(args) if args.strip() else {}
                args = parsed if isinstance(parsed, dict) else args
            except json.JSONDecodeError:
                pass  # kept as text: the tool env reports it as an observation
        calls.append(ToolCall(id=str(c.get("id") or f"call_{i}"), name=fn["name"], arguments=args))
    content = d.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    try:
        return Message(
            role=d.get("role"),
            content=content,
            tool_calls=calls or None,
            tool_call_id=d.get("tool_call_id"),
        )
    except Exception as e:
        raise ValueError(f"{where}: {e}") from None
