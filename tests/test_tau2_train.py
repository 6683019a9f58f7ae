"""Training on tau² domains: gold-replayed SFT dialogues in tau²'s user-simulator view (phone
tools included), imported dialogues trained on their last turn, the LM user calling its own
tools, and the whole loop (import -> SFT user and agent -> GRPO -> cross-checked eval) on a tiny
model."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eigen_core.chat_format import ChatFormat
from eigen_core.contracts import Dialogue, Message, ToolCall
from eigen_core.domains import get_domain
from eigen_core.domains.tau2 import load_tasks
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.stages.sft import encode, encode_dialogue, scripted_dialogues
from rollout.config import EpisodeConfig
from rollout.engine import SamplingParams
from rollout.episode import agent_context
from rollout.lm_agents import LMUser
from rollout.user_sim import user_context
from tests.test_lm_episode import ScriptedEngine

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def tok():
    d = get_domain("telecom")
    fmt = ChatFormat()
    texts = [fmt.render([Message(role="system", content=d.policy)], d.tool_schemas() + d.user_tool_schemas())]
    return build_small_tokenizer(texts, vocab_size=800)


def _telecom_with_user_actions():
    return next(
        t for t in load_tasks("telecom", "small") if any(a.requestor == "user" for a in t.gold_actions)
    )


def test_gold_dialogues_train_the_user_model_in_tau2s_view_with_its_phone_tools(tok):
    task = _telecom_with_user_actions()
    d = get_domain("telecom")
    ep = EpisodeConfig(prompt="full", max_steps=200)
    (traj,) = asyncio.run(scripted_dialogues([task], "telecom", ep, "gold"))
    assert any(m.role == "user" and m.tool_calls for m in traj.messages)  # the gold user acts on the phone
    ids, mask = encode(traj, task, "user", tok, ChatFormat(), agent_context(d, "full")[1], d)
    text = tok.decode(ids)
    ctx = user_context(d, task)
    assert text.startswith("<|im_start|>system\n" + ctx.system[:200])  # tau²'s user-simulator prompt
    assert all(t["function"]["name"] in text for t in ctx.tools[:5])  # its phone tools, offered
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "<tool_call>" in trained  # the user's own tool calls are what it learns, too
    assert ctx.greeting in text and d.policy[:100] not in text  # the greeting; not the agent's policy
    agent_ids, agent_mask = encode(traj, task, "agent", tok, ChatFormat(), agent_context(d, "full")[1], d)
    assert d.policy[:100] in tok.decode(agent_ids) and sum(agent_mask) > 0


def test_an_imported_turn_level_dialogue_trains_its_last_turn_only(tok):
    msgs = [Message(role="system", content="policy"), Message(role="user", content="hi"),
            Message(role="assistant", content="earlier turn"), Message(role="user", content="and?"),
            Message(role="assistant", content="the answer")]  # fmt: skip
    last = Dialogue(id="d", domain="airline", messages=msgs, learn="last")
    ids, mask = encode_dialogue(last, tok, ChatFormat())
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "the answer<|im_end|>"
    ids, mask = encode_dialogue(last.model_copy(update={"learn": "all"}), tok, ChatFormat())
    assert "earlier turn" in tok.decode([i for i, m in zip(ids, mask, strict=True) if m])


def test_the_lm_user_calls_its_own_tools_where_the_domain_gives_it_some(tok):
    task = _telecom_with_user_actions()
    ctx = user_context(get_domain("telecom"), task)
    call = '<tool_call>\n{"name": "check_status_bar", "arguments": {}}\n</tool_call>'
    engine = ScriptedEngine(tok, [call])
    user = LMUser(engine, tok, task.scenario, SamplingParams(max_new_tokens=64), 8192, context=ctx)
    reply = asyncio.run(user.respond([Message(role="system", content="agent policy")]))
    assert reply.role == "user" and reply.tool_calls == [
        ToolCall(id=reply.tool_calls[0].id, name="check_status_bar")
    ]
    prompt = tok.decode(engine.prompts[0])
    assert "check_status_bar" in prompt and ctx.greeting in prompt and "agent policy" not in prompt


@pytest.mark.slow
def test_the_tau2_loop_on_a_tiny_model(tmp_path):
    """configs/tau2_airline_smollm2.yaml with a tiny from-scratch model in SmolLM2's place and
    tiny step counts: every stage runs on tau² airline, the eval cross-checks tau²'s evaluator."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    tiny = [
        f"run.out_dir={tmp_path}", f"pool.dir={tmp_path}/pool", "run.progress=false",
        "model.hf_dir=null", "model.tokenizer=small", "model.remat=none",
        "sft_user.steps=2", "sft_agent.steps=2", "sft_user.eval_every=2", "sft_agent.eval_every=2",
        "episode.max_steps=4", "episode.turn_tokens=48", "grpo.steps=1", "grpo.tasks_per_step=1",
        "grpo.group_size=2", "eval.max_tasks=2", "eval.trials=1",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "eigen_jax.train", "--config", "configs/tau2_airline_smollm2.yaml", *tiny]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["import"]["imported"] == 50 and s["sft_user"]["train_dialogues"] == 30
    assert s["sft_agent"]["test_dialogues"] == 20 and s["grpo"]["steps"] == 1
    e = s["eval"]
    assert e["tau2_cross_checked"] and e["tasks"] == 2 and set(e["pass_hat_k"]) == {"base", "sft", "rl"}
    trajs = [json.loads(x) for x in (tmp_path / "eval/rl.trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == 2 and all("tau2" in t["reward_info"]["components"] for t in trajs)
    groups = [json.loads(x) for x in (tmp_path / "grpo/groups.jsonl").read_text().splitlines()]
    assert all(g["task_id"].startswith("airline:") for g in groups if "task_id" in g)
