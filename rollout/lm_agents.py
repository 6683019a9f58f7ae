"""Language-model parties of an episode: the policy agent (token-exact) and the LM user simulator.

``LMAgent`` keeps the episode as one growing token list. The first turn renders the system
prompt, tools and opening messages; every later turn appends only the *continuation* (tool
results, the user's reply, the next generation prompt) tokenized on its own, then the engine's
sampled tokens as they came. Earlier tokens are never re-tokenized, so the trajectory trains
exactly on what was sampled, with the behaviour logprob and policy version of every generated
token. ``ChatFormat.segments`` cuts SFT dialogues at the same places.
"""

from __future__ import annotations

from typing import Any

from eigen_core.chat_format import IM_END, ChatFormat
from eigen_core.contracts import Message, UserScenario
from eigen_core.tokenizer import Tokenizer
from rollout.agents import Agent, TokenTranscript
from rollout.engine import ContextOverflow, InferenceEngine, SamplingParams
from rollout.user_sim import UserContext, user_view


def _with_eos(sampling: SamplingParams, tok: Tokenizer) -> SamplingParams:
    """``sampling`` that also stops at the end-of-turn token."""
    return sampling.model_copy(update={"stop_token_ids": sorted({*sampling.stop_token_ids, tok.eos_id})})


def _fitted(sampling: SamplingParams, used: int, max_len: int, who: str, turn: int) -> SamplingParams:
    """``sampling`` for turn ``turn``: ``max_new_tokens`` cut to what fits after ``used`` tokens
    (``ContextOverflow`` when nothing fits) and a seeded request's seed moved on per turn, so an
    episode is reproducible without every turn drawing the same random numbers."""
    budget = max_len - used
    if budget < 1:
        raise ContextOverflow(f"{who} context is full ({used} of {max_len} tokens)")
    update: dict[str, int] = {"max_new_tokens": min(sampling.max_new_tokens, budget)}
    if sampling.seed is not None:
        update["seed"] = (sampling.seed + 1_000_003 * turn) % 2**31
    return sampling.model_copy(update=update)


class LMAgent(Agent):
    """The policy as an ``Agent``: one per episode (it holds the episode's transcript).

    Args:
        engine: serves the policy (in-process sampler or an HTTP engine).
        tokenizer: the policy's tokenizer (its ``eos_id`` ends every assistant turn).
        sampling: sampling knobs; ``max_new_tokens`` bounds each turn; the eos stop is added.
        max_len: longest transcript (prompt + completion) the engine serves; a turn that would
            not fit raises ``ContextOverflow`` and the episode ends with ``context_overflow``.
        fmt: the chat format the policy was trained with.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        tokenizer: Tokenizer,
        sampling: SamplingParams,
        max_len: int,
        fmt: ChatFormat | None = None,
    ):
        self.engine, self.tok, self.max_len = engine, tokenizer, max_len
        self.fmt = fmt or ChatFormat()
        self.sampling = _with_eos(sampling, tokenizer)
        self.transcript: TokenTranscript = TokenTranscript()
        self._seen = 0  # messages already in the transcript (the last one: our reply)
        self._reply: Message | None = None
        self._turns = 0

    async def act(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        if self._reply is None:
            text = self.fmt.render(messages, tools, add_generation_prompt=True)
        else:
            # The ``Agent`` contract: the conversation goes on from our last reply. Anything else
            # would splice tokens we never sampled into the transcript.
            said = messages[self._seen - 1] if len(messages) >= self._seen else None
            if said is None or said.role != "assistant" or said.content != self._reply.content:
                raise ValueError("LMAgent: the conversation does not continue from the agent's last reply")
            text = self.fmt.continuation(messages[self._seen :])
        self.transcript.add_context(self.tok.encode(text))
        sp = _fitted(self.sampling, len(self.transcript), self.max_len, "the agent's", self._turns)
        if sp.routes is not None:  # fetch only the routes the transcript lacks
            sp = sp.model_copy(update={"routes_start": self.transcript.routes_known()})
        self._turns += 1
        gen = await self.engine.generate(list(self.transcript.tokens), sp)
        self.transcript.add_generated(gen.tokens, gen.logprobs, gen.version, gen.routes)
        if not gen.tokens or gen.tokens[-1] != self.tok.eos_id:
            # Cut off by the length limit: close the turn (not trained) so the next continuation
            # starts where the chat format expects it.
            self.transcript.add_context([self.tok.eos_id])
        self._seen = len(messages) + 1
        self._reply = self.fmt.parse_assistant(self.tok.decode(gen.tokens))
        return self._reply


class LMUser:
    """An LM user simulator (e.g. the SFT'd user model): sees ``user_view`` of the conversation.

    Args:
        engine: serves the user model.
        tokenizer: the user model's tokenizer.
        scenario: the task's user scenario (its system prompt).
        sampling: sampling knobs for each user turn (the eos stop is added).
        max_len: longest prompt + completion; beyond it the episode ends with ``context_overflow``.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        tokenizer: Tokenizer,
        scenario: UserScenario,
        sampling: SamplingParams,
        max_len: int,
        fmt: ChatFormat | None = None,
        context: UserContext | None = None,
    ):
        self.engine, self.tok, self.scenario, self.max_len = engine, tokenizer, scenario, max_len
        self.fmt = fmt or ChatFormat()
        self.sampling = _with_eos(sampling, tokenizer)
        self.context = context or UserContext()
        self._turns = 0

    async def respond(self, messages: list[Message]) -> Message:
        view = user_view(self.scenario, messages, self.context)
        tools = self.context.tools
        ids = self.tok.encode(self.fmt.render(view, tools or None, add_generation_prompt=True))
        sp = _fitted(self.sampling, len(ids), self.max_len, "the user simulator's", self._turns)
        self._turns += 1
        gen = await self.engine.generate(ids, sp)
        text = self.tok.decode(gen.tokens).removesuffix(IM_END).strip()
        if not tools:
            return Message(role="user", content=text)
        said = self.fmt.parse_assistant(text)  # its own tool calls, in the chat format's syntax
        return Message(
            role="user", content=said.content, tool_calls=said.tool_calls, malformed=said.malformed
        )
