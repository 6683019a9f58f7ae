"""``python -m eigen_jax.eval``: the shipped configs run end to end against local endpoints (a tiny
random model: the plumbing, files and numbers are under test, not the score), resume without
redoing finished trials, and bad configs are named."""

import asyncio
import json
from pathlib import Path

import pytest
from flax import nnx

from eigen_apps.eval.config import EvalRunConfig
from eigen_core.chat_format import ChatFormat
from eigen_core.config import EndpointSection
from eigen_core.configio import ConfigError, load_config
from eigen_core.contracts import Message
from eigen_core.domains import get_domain
from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.eval import _main, serve_checkpoint
from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.model.hf import save_hf
from eigen_jax.train_config import TINY_ARCH

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random 64-wide model with a BPE fitted to the tau² prompts, so they stay short."""
    root = tmp_path_factory.mktemp("evalmodel")
    fmt = ChatFormat()
    texts = []
    for name in ("airline", "retail", "telecom"):
        d = get_domain(name)
        texts.append(fmt.render([Message(role="system", content=d.policy)], d.tool_schemas()))
        texts.append(fmt.render([Message(role="system", content="x")], d.user_tool_schemas()))
    tok = build_small_tokenizer(texts, 4096)
    model = Decoder(
        DecoderConfig.from_hf({**TINY_ARCH, "vocab_size": 4096, "max_position_embeddings": 16384}),
        rngs=nnx.Rngs(0),
    )
    tok.save(root / "tok")
    save_hf(model, root / "hf", tokenizer_dir=root / "tok")
    return root / "hf"


def _cfg(name: str, out: Path, ckpt: Path, *extra: str) -> EvalRunConfig:
    return load_config(
        EvalRunConfig,
        CONFIGS / name,
        [
            f"run.out_dir={out}",
            "eval.trials=2",
            "episode.concurrency=2",
            "episode.max_steps=4",
            "run.progress=false",
            "eval.max_tasks=2",
            "agent.kind=checkpoint",
            f"agent.checkpoint={ckpt}",
            "agent.max_tokens=8",
            "agent.temperature=1.0",
            *extra,
        ],
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _check_outputs(out: Path, tau2: bool) -> dict:
    trials = _lines(out / "trials.jsonl")
    assert len(trials) == 4 and {(t["task_id"], t["trial"]) for t in trials}.__len__() == 4
    if tau2:  # every trajectory also went through tau²'s evaluator, which agreed
        assert all(t["components"]["tau2"] == t["reward"] for t in trials)
    report = json.loads((out / "results.json").read_text())
    assert set(report["pass_hat_k"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in report["pass_hat_k"].values())
    assert report["pass_hat_k"]["2"] <= report["pass_hat_k"]["1"]
    assert sum(report["terminations"].values()) == 4
    assert (out / "passk.png").stat().st_size > 1000
    assert len(_lines(out / "trajectories.jsonl")) == 4
    return report


@pytest.mark.parametrize("domain", ["airline", "retail"])
def test_tau2_config_runs_end_to_end_and_resumes(domain, tiny_checkpoint, tmp_path):
    cfg = _cfg(f"eval_tau2_{domain}.yaml", tmp_path, tiny_checkpoint, "user.kind=rules")
    asyncio.run(_main(cfg))
    report = _check_outputs(tmp_path, tau2=True)
    assert report["tau2_cross_checked"] == 4 and report["tasks"]["split"] == "test"
    # A rerun finds every trial done and runs nothing.
    asyncio.run(_main(cfg))
    assert len(_lines(tmp_path / "trajectories.jsonl")) == 4
    # Interrupted after three trials (the last line torn): only the missing one runs again.
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    (tmp_path / "trials.jsonl").write_text("\n".join(lines[:3]) + '\n{"task_id": "x", "tri')
    asyncio.run(_main(cfg))
    assert len(_lines(tmp_path / "trajectories.jsonl")) == 5
    assert len({(t["task_id"], t["trial"]) for t in _lines_tolerant(tmp_path / "trials.jsonl")}) == 4


def _lines_tolerant(path: Path) -> list[dict]:
    out = []
    for x in path.read_text().splitlines():
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    return out


def test_telecom_with_a_model_user_that_has_phone_tools(tiny_checkpoint, tmp_path):
    """Agent and user are endpoints (one local server plays both); the user gets telecom's 30
    phone tools, and its calls run on the user's side. (The agent gets the brief prompt: telecom's
    30k-character policy is what airline and retail already cover, at a fraction of the CPU.)"""

    async def go():
        party = EndpointSection(kind="checkpoint", checkpoint=str(tiny_checkpoint), model="tiny")
        async with serve_checkpoint(party, "agent and user") as url:
            cfg = _cfg(
                "eval_tau2_telecom.yaml",
                tmp_path,
                tiny_checkpoint,
                "agent.kind=endpoint",
                f"agent.url={url}",
                "agent.model=tiny",
                "user.kind=endpoint",
                f"user.url={url}",
                "user.model=tiny",
                "user.max_tokens=8",
                "episode.prompt=brief",
            )
            return await _main(cfg)

    report = asyncio.run(go())
    assert report["user"]["kind"] == "endpoint"
    _check_outputs(tmp_path, tau2=True)


def test_endpoint_agent_over_http(tiny_checkpoint, tmp_path):
    """The agent as a plain OpenAI-compatible endpoint (here our own server) on the shop domain's
    tasks from a pool: no tau² involved."""
    from eigen_core.pool import PoolWriter
    from synth.config import ProceduralConfig
    from synth.procedural.shop import generate_shop_task

    pcfg = ProceduralConfig(seed=3, num_tasks=2)
    with PoolWriter(tmp_path / "pool") as w:
        for i in range(2):
            w.add(generate_shop_task(pcfg, i).model_copy(update={"split": "test"}))

    async def go():
        party = EndpointSection(kind="checkpoint", checkpoint=str(tiny_checkpoint), model="tiny")
        async with serve_checkpoint(party, "agent") as url:
            cfg = load_config(
                EvalRunConfig,
                CONFIGS / "eval_shop.yaml",
                [
                    f"run.out_dir={tmp_path / 'out'}",
                    "eval.trials=2",
                    "run.progress=false",
                    f"pool.dir={tmp_path / 'pool'}",
                    "agent.kind=endpoint",
                    f"agent.url={url}",
                    "agent.model=tiny",
                    "agent.max_tokens=8",
                ],
            )
            return await _main(cfg)

    report = asyncio.run(go())
    assert report["agent"]["kind"] == "endpoint" and report["tau2_cross_checked"] is None
    _check_outputs(tmp_path / "out", tau2=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent.kind=rules"], "agent.kind: 'rules' is not possible here"),
        (["user.kind=scripted"], "the rule-based user simulator is 'rules'"),
        (["agent.kind=checkpoint"], "checkpoint"),
        (["domain.name=shop"], "needs a tau² domain"),
        (["eval.trials=0"], "eval.trials"),
        # the keys the standalone eval had before it spoke the train config's vocabulary
        (["run.trials=2"], "run.trials is now eval.trials"),
        (["run.max_steps=9"], "run.max_steps is now episode.max_steps"),
        (["tasks.pool_dir=x"], "tasks.pool_dir is now pool.dir"),
    ],
)
def test_bad_configs_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvalRunConfig, CONFIGS / "eval_tau2_airline.yaml", overrides)


@pytest.mark.parametrize(
    "name", ["eval_tau2_airline.yaml", "eval_tau2_retail.yaml", "eval_tau2_telecom.yaml", "eval_shop.yaml"]
)
def test_shipped_configs_validate(name):
    load_config(EvalRunConfig, CONFIGS / name)


def test_chat_user_calls_its_phone_tools_through_the_endpoint():
    """A scripted chat endpoint plays the user: first a phone-tool call, then text, then stop.
    The call runs on the user's side and its result goes back to the user, not the agent."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from eigen_core.domains.tau2 import load_tasks
    from rollout.agents import IdleAgent
    from rollout.chat_agents import ChatUser
    from rollout.episode import agent_view, run_episode
    from rollout.http_engine import HTTPEngine

    domain = get_domain("telecom")
    task = load_tasks("telecom", "small")[0]
    tool = next(
        s["function"]["name"]
        for s in domain.user_tool_schemas()
        if not s["function"]["parameters"].get("required")
    )
    replies = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "u1", "type": "function", "function": {"name": tool, "arguments": "{}"}}],
        },
        {"role": "assistant", "content": "My phone has no data."},
        {"role": "assistant", "content": "Fine. ###STOP###"},
    ]
    seen = []

    async def chat(request):
        body = await request.json()
        seen.append(body)
        return web.json_response({"choices": [{"message": replies[len(seen) - 1]}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)

    async def go():
        server = TestServer(app)
        await server.start_server()
        try:
            async with HTTPEngine(str(server.make_url("")).rstrip("/"), "u") as client:
                user = ChatUser(
                    client,
                    task.scenario,
                    tools=domain.user_tool_schemas(),
                    system_prompt=domain.user_system_prompt(task),
                )
                return await run_episode(task, domain, IdleAgent(), user)
        finally:
            await server.close()

    traj = asyncio.run(go())
    assert traj.termination.value == "user_stop"
    call = traj.messages[1].tool_calls[0]
    assert call.name == tool and call.requestor == "user"
    assert traj.messages[2].role == "tool" and "Error" not in traj.messages[2].content
    # The user got tau²'s own prompt and, as in tau², the agent's greeting opens the conversation.
    first = seen[0]["messages"]
    assert first[0]["content"] == domain.user_system_prompt(task)
    assert "User Simulation Guidelines" in first[0]["content"]
    assert task.scenario.reason_for_call.strip()[:40] in first[0]["content"]
    assert first[1] == {"role": "user", "content": "Hi! How can I help you today?"}
    # The user saw its tool and the result; the agent saw neither.
    assert {t["function"]["name"] for t in seen[1]["tools"]} >= {tool}
    assert seen[1]["messages"][-1]["role"] == "tool"
    assert not any(m.role == "tool" for m in agent_view(traj.messages))


def test_a_disagreement_with_tau2_stops_the_run_and_keeps_the_trajectory(tmp_path, monkeypatch):
    """A fake endpoint plays a do-nothing agent; tau²'s evaluator is made to disagree once."""
    from types import SimpleNamespace

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    import verifiers.tau2_eval
    from eigen_apps.eval.endpoints import ParityError

    async def chat(request):
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "Sorry."}}]})

    async def go(overrides):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        server = TestServer(app)
        await server.start_server()
        try:
            url = str(server.make_url("")).rstrip("/")
            cfg = load_config(
                EvalRunConfig,
                CONFIGS / "eval_tau2_retail.yaml",
                [
                    f"run.out_dir={tmp_path}",
                    "eval.trials=1",
                    "run.progress=false",
                    "eval.max_tasks=1",
                    f"agent.url={url}",
                    "user.kind=rules",
                    *overrides,
                ],
            )
            return await _main(cfg)
        finally:
            await server.close()

    report = asyncio.run(go([]))  # the real evaluator agrees
    assert report["tau2_cross_checked"] == 1
    monkeypatch.setattr(verifiers.tau2_eval, "tau2_reward", lambda task, traj: SimpleNamespace(reward=0.5))
    with pytest.raises(ParityError, match=r"!= tau²'s 0\.5"):
        asyncio.run(go(["eval.trials=2"]))
    assert len(_lines(tmp_path / "trajectories.jsonl")) == 2
