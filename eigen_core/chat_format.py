"""The chat format (Qwen/Hermes ChatML with ``<tool_call>`` JSON): render and parse.

``render`` produces exactly what Qwen3's chat template produces (tested against it) for
conversations whose assistant turns carry no reasoning. For token-in/token-out episodes, text is
only ever appended: ``continuation`` renders the turns that follow a generated assistant turn
(which ended with ``<|im_end|>``), starting and ending at special tokens, so tokenizing the
pieces separately gives the same ids as tokenizing the whole.

``parse_assistant`` turns generated text into a ``Message``; output it cannot parse becomes a
text message with ``malformed`` set, never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from eigen_core.contracts import Message, ToolCall

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def _dumps(x: Any) -> str:
    return json.dumps(x, ensure_ascii=False)  # as the template's ``tojson``


class ChatFormat:
    """ChatML with Hermes-style tool calls.

    Args:
        empty_think: open every assistant turn with an empty ``<think>\\n\\n</think>\\n\\n``
            (Qwen3 with thinking disabled); off for models trained without think blocks.
    """

    stop = IM_END

    def __init__(self, empty_think: bool = False):
        self.empty_think = empty_think

    def generation_prompt(self) -> str:
        return f"{IM_START}assistant\n" + ("<think>\n\n</think>\n\n" if self.empty_think else "")

    def _system(self, system: str | None, tools: Sequence[dict[str, Any]] | None) -> str:
        if tools:
            head = f"{IM_START}system\n" + (f"{system}\n\n" if system is not None else "")
            return head + _TOOLS_HEAD + "".join("\n" + _dumps(t) for t in tools) + _TOOLS_TAIL + f"{IM_END}\n"
        return f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""

    def assistant_body(self, m: Message) -> str:
        """An assistant turn's text between the generation prompt and ``<|im_end|>``."""
        content = m.content or ""
        out = content
        for i, call in enumerate(m.tool_calls or []):
            if i > 0 or content:
                out += "\n"
            args = call.arguments if isinstance(call.arguments, str) else _dumps(call.arguments)
            out += f'<tool_call>\n{{"name": "{call.name}", "arguments": {args}}}\n</tool_call>'
        return out

    def _messages(self, messages: Sequence[Message]) -> str:
        out = []
        for i, m in enumerate(messages):
            if m.role in ("user", "system"):
                out.append(f"{IM_START}{m.role}\n{m.content or ''}{IM_END}\n")
            elif m.role == "assistant":
                out.append(self.generation_prompt() + self.assistant_body(m) + f"{IM_END}\n")
            else:  # tool results: one user turn per run of consecutive tool messages
                if i == 0 or messages[i - 1].role != "tool":
                    out.append(f"{IM_START}user")
                out.append(f"\n<tool_response>\n{m.content or ''}\n</tool_response>")
                if i == len(messages) - 1 or messages[i + 1].role != "tool":
                    out.append(f"{IM_END}\n")
        return "".join(out)

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The whole conversation as the model sees it (a leading system message holds the policy)."""
        system = messages[0].content if messages and messages[0].role == "system" else None
        rest = messages[1:] if system is not None else messages
        text = self._system(system, tools) + self._messages(rest)
        return text + (self.generation_prompt() if add_generation_prompt else "")

    def segments(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[tuple[str, bool]]:
        """``render(messages, tools)`` cut into (text, generated) pieces: ``generated`` is True for
        each assistant turn's body plus its ``<|im_end|>`` -- what a policy samples, so what SFT
        trains on. Pieces start and end at the same places as token-in/token-out episodes
        append them, so tokenizing them one by one gives the ids an episode would."""
        system = messages[0].content if messages and messages[0].role == "system" else None
        rest = list(messages[1:] if system is not None else messages)
        out: list[tuple[str, bool]] = []
        prompt = self._system(system, tools)
        start = 0
        for i, m in enumerate(rest):
            if m.role != "assistant":
                continue
            prompt += self._messages(rest[start:i]) + self.generation_prompt()
            out += [(prompt, False), (self.assistant_body(m) + IM_END, True)]
            prompt, start = "\n", i + 1
        prompt += self._messages(rest[start:])
        if prompt:
            out.append((prompt, False))
        return [(text, gen) for text, gen in out if text]

    def continuation(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Text to append after a generated assistant turn that ended with ``<|im_end|>``."""
        text = "\n" + self._messages(messages)
        return text + (self.generation_prompt() if add_generation_prompt else "")

    def parse_assistant(self, text: str) -> Message:
        """Generated text (without the final ``<|im_end|>``) -> an assistant ``Message``."""
        raw = text
        text = text.removesuffix(IM_END)
        think = _THINK.match(text)
        if think:
            text = text[think.end() :]
        calls: list[ToolCall] = []
        problems: list[str] = []
        for n, match in enumerate(_TOOL_CALL.finditer(text)):
            try:
                obj = json.loads(match.group(1))
            except json.JSONDecodeError as e:
                problems.append(f"tool call {n}: invalid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                problems.append(f"tool call {n}: needs an object with a string 'name'")
                continue
            args = obj.get("arguments", {})
            if not isinstance(args, dict | str):
                problems.append(f"tool call {n}: 'arguments' must be an object")
                continue
            calls.append(ToolCall(id=f"call_{n}", name=obj["name"], arguments=args))
        rest = _TOOL_CALL.sub("", text)
        if "<tool_call>" in rest or "</tool_call>" in rest:
            problems.append("unbalanced <tool_call> tags")
        if problems:
            return Message(role="assistant", content=raw, malformed="; ".join(problems))
        content = rest.strip() or None
        return Message(role="assistant", content=content, tool_calls=calls or None)
