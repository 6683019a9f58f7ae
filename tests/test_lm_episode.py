"""Token-in/token-out episodes with LM parties, driven by a scripted engine (no model needed)."""

import asyncio

import pytest

from eigen_core.chat_format import IM_END, ChatFormat
from eigen_core.contracts import Message, Termination
from eigen_core.tokenizer import build_small_tokenizer
from rollout.agents import OracleAgent
from rollout.engine import Generation, InferenceEngine, SamplingParams
from rollout.episode import run_episode
from rollout.lm_agents import LMAgent, LMUser
from rollout.user_sim import ScriptedUser


@pytest.fixture(scope="module")
def tok(shop, shop_tasks):
    fmt = ChatFormat()
    texts = [fmt.render([Message(role="system", content=shop.policy)], shop.tool_schemas())]
    texts += [t.scenario.reason_for_call for t in shop_tasks]
    return build_small_tokenizer(texts, vocab_size=600)


class ScriptedEngine:
    """Answers each request with the next scripted text (+ eos unless ``cut``), recording prompts."""

    def __init__(self, tok, texts, version=3, cut=False):
        self.tok, self.texts, self._version, self.cut = tok, list(texts), version, cut
        self.prompts: list[list[int]] = []
        self.outputs: list[list[int]] = []

    @property
    def version(self) -> int:
        return self._version

    async def generate(self, prompt_tokens, sampling):
        self.prompts.append(list(prompt_tokens))
        text = self.texts.pop(0) if self.texts else "Goodbye."
        ids = self.tok.encode(text) + ([] if self.cut else [self.tok.eos_id])
        ids = ids[: sampling.max_new_tokens]
        self.outputs.append(ids)
        lps = [-0.01 * (i + 1) for i in range(len(ids))]
        done = "stop" if ids and ids[-1] in sampling.stop_token_ids else "length"
        return Generation(tokens=ids, logprobs=lps, finish_reason=done, version=self._version)


def _oracle_texts(task, fmt):
    """What a perfect policy would generate: the oracle's messages as assistant bodies."""

    async def collect():
        agent, out = OracleAgent(task), []
        for _ in range(len(task.gold_actions) + len(task.scenario.known_info) + 1):
            out.append(fmt.assistant_body(await agent.act([], [])))
        return out

    return asyncio.run(collect())


def _episode(task, domain, agent, **kw):
    return asyncio.run(run_episode(task, domain, agent, ScriptedUser(task.scenario), **kw))


def test_scripted_engine_is_an_engine(tok):
    assert isinstance(ScriptedEngine(tok, []), InferenceEngine)


def test_transcript_is_token_exact(shop, shop_tasks, tok):
    fmt = ChatFormat()
    task = shop_tasks[0]
    engine = ScriptedEngine(tok, _oracle_texts(task, fmt))
    agent = LMAgent(engine, tok, SamplingParams(max_new_tokens=200), max_len=8192)
    traj = _episode(task, shop, agent)
    assert traj.termination == Termination.USER_STOP, traj.error
    # The scripted policy replays the gold actions: the episode is the oracle's.
    assert [(c.name, c.arguments) for c in traj.tool_calls()] == [
        (a.name, a.arguments) for a in task.gold_actions
    ]

    last = max(i for i, m in enumerate(traj.messages) if m.role == "assistant")
    tools = shop.tool_schemas()
    # Appended pieces decode to the whole conversation as the chat template renders it ...
    assert tok.decode(traj.tokens) + "\n" == fmt.render(traj.messages[: last + 1], tools)
    # ... and are exactly the SFT segments' tokens (episodes and SFT cut at the same places).
    pieces = fmt.segments(traj.messages[: last + 1], tools)
    assert pieces[-1] == ("\n", False)
    assert traj.tokens == [t for text, _ in pieces[:-1] for t in tok.encode(text)]
    # Every generated token, and only those, is trained, with its logprob and version.
    generated = [i for i, m in enumerate(traj.loss_mask) if m]
    assert [traj.tokens[i] for i in generated] == [t for out in engine.outputs for t in out]
    assert [traj.behaviour_logprobs[i] for i in generated] == [
        -0.01 * (k + 1) for out in engine.outputs for k in range(len(out))
    ]
    assert all(traj.versions[i] == 3 for i in generated)
    assert all(
        v == -1 and lp == 0.0
        for v, lp, m in zip(traj.versions, traj.behaviour_logprobs, traj.loss_mask, strict=True)
        if not m
    )
    # Each request's prompt is the transcript so far: earlier tokens never change.
    for p, nxt in zip(engine.prompts, engine.prompts[1:], strict=False):
        assert nxt[: len(p)] == p


def test_malformed_tool_call_continues_the_episode(shop, shop_tasks, tok):
    task = shop_tasks[0]
    engine = ScriptedEngine(tok, ['<tool_call>\n{"name": "get_customer", "arguments": {bad\n</tool_call>'])
    traj = _episode(task, shop, LMAgent(engine, tok, SamplingParams(), max_len=8192))
    bad = traj.messages[2]
    assert bad.role == "assistant" and bad.malformed and "invalid JSON" in bad.malformed
    assert traj.messages[3].role == "user"  # the user answered; the episode went on
    assert traj.termination == Termination.USER_STOP and traj.error is None


def test_context_overflow_ends_the_episode_cleanly(shop, shop_tasks, tok):
    task = shop_tasks[0]
    fmt = ChatFormat()
    full = ScriptedEngine(tok, _oracle_texts(task, fmt))
    _episode(task, shop, LMAgent(full, tok, SamplingParams(), max_len=8192))
    second = len(full.prompts[1])  # the second turn's prompt fills this context exactly
    engine = ScriptedEngine(tok, _oracle_texts(task, fmt))
    traj = _episode(task, shop, LMAgent(engine, tok, SamplingParams(), max_len=second))
    assert traj.termination == Termination.CONTEXT_OVERFLOW
    assert "context is full" in traj.error
    assert len(engine.prompts) == 1 and len(traj.tokens) == second  # what was sampled is kept
    assert traj.tokens[: len(full.prompts[1])] == full.prompts[1]


def test_length_cut_turn_is_closed_untrained(shop, tok):
    engine = ScriptedEngine(tok, ["I will look that up for you right now, one moment please"], cut=True)
    agent = LMAgent(engine, tok, SamplingParams(max_new_tokens=5), max_len=8192)
    asyncio.run(
        agent.act([Message(role="system", content=shop.policy), Message(role="user", content="hi")], [])
    )
    t = agent.transcript
    assert t.tokens[-1] == tok.eos_id and t.loss_mask[-1] == 0
    assert sum(t.loss_mask) == 5 and tok.eos_id not in engine.outputs[0]


def test_lm_user_sees_its_view_and_can_stop(shop_tasks, tok):
    task = shop_tasks[0]
    engine = ScriptedEngine(tok, ["I want to cancel my order.", "Thanks, bye. ###STOP###"])
    user = LMUser(engine, tok, task.scenario, SamplingParams(), max_len=4096)
    first = asyncio.run(user.respond([Message(role="system", content="policy")]))
    assert first == Message(role="user", content="I want to cancel my order.")
    prompt = tok.decode(engine.prompts[0])
    assert task.scenario.reason_for_call in prompt and "policy" not in prompt  # the user's view only
    msgs = [Message(role="system", content="policy"), first, Message(role="assistant", content="Done.")]
    second = asyncio.run(user.respond(msgs))
    assert second.content.endswith("###STOP###") and not second.content.endswith(IM_END)
    assert "Done." in tok.decode(engine.prompts[1])


def test_agent_refuses_a_conversation_that_does_not_continue_from_its_reply(tok):
    """The ``Agent`` contract: each call's messages extend the last call's plus its reply. An
    LMAgent handed anything else refuses rather than splice unsampled tokens into its transcript."""
    agent = LMAgent(
        ScriptedEngine(tok, ["Hello there.", "Again."]), tok, SamplingParams(max_new_tokens=32), 4096
    )
    opening = [Message(role="system", content="s"), Message(role="user", content="hi")]
    reply = asyncio.run(agent.act(opening, []))
    ok = [*opening, reply, Message(role="user", content="more")]
    forged = [*opening, Message(role="assistant", content="not what it said"), ok[-1]]
    with pytest.raises(ValueError, match="does not continue"):
        asyncio.run(agent.act(forged, []))
    asyncio.run(agent.act(ok, []))  # the real continuation still works
    assert agent.transcript is not None and sum(agent.transcript.loss_mask) > 0
