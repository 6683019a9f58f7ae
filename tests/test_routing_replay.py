"""Routing replay (R3) for MoE policies: the sampler records the experts of every token it
computes, trajectories carry them compactly, and the learner replays them."""

import asyncio

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_models import write_tiny

from eigen_core.contracts import Termination, Trajectory
from eigen_core.routes import (
    ExpertRoutes,
    RouteLayout,
    padded_routes,
    routes_from_vllm,
    routes_to_vllm,
    width_for,
)
from eigen_jax.model import positions_from_mask
from eigen_jax.model.hf import load_hf
from eigen_jax.objectives import forward_stats, sequence_logprobs
from eigen_jax.sampler import Sampler
from eigen_jax.stages.grpo import GRPOUpdate, build_batch
from eigen_jax.train_config import GRPOSection
from rollout.agents import TokenTranscript
from rollout.engine import SamplingParams

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42], [9, 9, 9, 9, 9, 9]]


@pytest.fixture(scope="module")
def moe_path(tmp_path_factory):
    return write_tiny("qwen3-moe", tmp_path_factory.mktemp("moe"))[1]


def _own_routes(model, seq):
    ids = jnp.asarray([seq])
    mask = jnp.ones_like(ids)
    return np.asarray(model.hidden_routed(ids, positions_from_mask(mask), mask)[2].experts[0])


def test_routes_encode_compactly_and_refuse_bad_data():
    a = np.array([[[0, 3], [2, 1]], [[-1, -1], [-1, -1]], [[7, 6], [5, 4]]], np.int32)
    r = ExpertRoutes.from_array(a, width_for(8))
    assert r.width == 1 and len(r.data) == 16  # 12 bytes, base64
    back = ExpertRoutes.model_validate_json(r.model_dump_json())
    np.testing.assert_array_equal(back.known(), [True, False, True])
    np.testing.assert_array_equal(back.array()[[0, 2]], a[[0, 2]])
    assert width_for(300) == 2 and ExpertRoutes.from_array(a + 290 * (a >= 0), 2).array()[2, 0, 0] == 297
    with pytest.raises(ValueError, match="bytes of data"):
        ExpertRoutes(tokens=3, layers=2, k=2, data=r.data[:8])
    with pytest.raises(ValueError, match="does not fit 1 byte"):
        ExpertRoutes.from_array(a + 300, 1)
    with pytest.raises(ValueError, match="routes cover 3 tokens, tokens has 2"):
        Trajectory(
            task_id="t", messages=[], tokens=[1, 2], loss_mask=[0, 1], behaviour_logprobs=[0, 0],
            versions=[-1, 0], routes=r, termination=Termination.USER_STOP,
        )  # fmt: skip
    routes, known = padded_routes([r, None], 4, 2, 2)
    assert routes.shape == (2, 4, 2, 2) and known.tolist() == [[True, False, True, False], [False] * 4]
    with pytest.raises(ValueError, match=r"row 0: .*the model has"):
        padded_routes([r], 4, 3, 2)


def test_sampler_records_the_routes_the_learner_takes(moe_path):
    model = load_hf(moe_path)
    gens = Sampler(model, record_routes=True).generate_batch(
        PROMPTS, SamplingParams(max_new_tokens=9, seed=2)
    )
    for prompt, g in zip(PROMPTS, gens, strict=True):
        seq = prompt + g.tokens
        assert g.routes.tokens == len(seq)  # no prefix cache: every prompt token was computed
        np.testing.assert_array_equal(g.routes.array(), _own_routes(model, seq))
    with pytest.raises(ValueError, match="no MoE layers"):
        Sampler(load_hf(write_tiny("qwen3", moe_path.parent)[1]), record_routes=True)


def test_a_multi_turn_transcript_carries_every_computed_tokens_routes(moe_path):
    """With a prefix cache the second turn computes only its new tokens; the transcript still
    ends up with the routes of every token either call computed."""
    model = load_hf(moe_path)
    sampler = Sampler(model, record_routes=True, prefix_cache_mb=16)
    t = TokenTranscript()
    t.add_context([3, 4, 5, 6])
    g1 = sampler.generate_batch([t.tokens], SamplingParams(max_new_tokens=5, seed=1))[0]
    t.add_generated(g1.tokens, g1.logprobs, g1.version, g1.routes)
    t.add_context([11, 12, 13])  # a tool reply
    g2 = sampler.generate_batch([t.tokens], SamplingParams(max_new_tokens=4, seed=2))[0]
    assert sampler.prefix_cache.hit_rate > 0  # the cached prefix was not recomputed: its routes were kept
    assert g2.routes.tokens == len(t.tokens) + len(g2.tokens) and g2.routes.known().all()
    t.add_generated(g2.tokens, g2.logprobs, g2.version, g2.routes)
    routes = t.routes()
    assert routes.tokens == len(t.tokens) and routes.known().all()
    own = _own_routes(model, t.tokens)
    np.testing.assert_array_equal(routes.array(), own)  # fp32: the same experts either way
    t.add_context([1])
    assert not t.routes().known()[-1]  # context no call has computed yet


def test_vllms_routed_experts_format_and_its_errors():
    """vLLM answers [tokens - 1, every layer, k] from ``routed_experts_prompt_start`` on (the last
    sampled token never went through the model); we keep the sparse layers, the last token unknown."""
    layout = RouteLayout(moe_layers=(0, 2), num_experts=8, k=2)
    rng = np.random.default_rng(0)
    ours = ExpertRoutes.from_array(rng.integers(0, 8, (7, 2, 2)), 1)  # the last 7 of 10 tokens
    wire = routes_to_vllm(ours, layout, num_layers=3, tokens=10, start=1)
    import base64
    import io

    a = np.load(io.BytesIO(base64.b64decode(wire)))
    assert a.shape == (8, 3, 2) and a.dtype == np.uint8  # tokens 1..8
    assert (a[:, 1] == 0).all() and (a[:2, [0, 2]] == 255).all()  # dense layer; tokens not computed
    back = routes_from_vllm(wire, layout, tokens=10)
    assert back.tokens == 9 and back.known().tolist() == [False, False] + [True] * 6 + [False]
    np.testing.assert_array_equal(back.array()[2:8], ours.array()[:6])
    with pytest.raises(ValueError, match="more than the request's 5 - 1"):
        routes_from_vllm(wire, layout, tokens=5)
    with pytest.raises(ValueError, match=r"expected \[tokens, >= 3 layers, 3\]"):
        routes_from_vllm(wire, layout.model_copy(update={"k": 3}), tokens=10)
    with pytest.raises(ValueError, match=r"not a base64 \.npy"):
        routes_from_vllm("bm90IG5weQ==", layout, tokens=10)


def test_routes_over_http_as_vllm_returns_them(moe_path):
    """``eigen_jax.serve --enable-return-routed-experts`` answers as vLLM does; the HTTP engine
    reads the routes into a multi-turn transcript (prefix-cache hits keep the first call's), which
    ends with every computed token's routes: the learner's own."""
    from http_helpers import run_with

    from eigen_core.tokenizer import build_small_tokenizer
    from eigen_jax.serve import Server
    from rollout.http_engine import EngineError, HTTPEngine

    model = load_hf(moe_path)
    tok = build_small_tokenizer(["route every token through its experts"] * 10, 200)
    sp = SamplingParams(max_new_tokens=5, seed=1, routes=RouteLayout.of(model.cfg))
    t = TokenTranscript()

    async def go(url):
        async with HTTPEngine(url, "m") as eng:
            t.add_context([3, 4, 5, 6])
            g1 = await eng.generate(t.tokens, sp)
            t.add_generated(g1.tokens, g1.logprobs, g1.version, g1.routes)
            t.add_context([11, 12, 13])
            start = t.routes_known()  # the second turn fetches only the routes the transcript lacks
            g2 = await eng.generate(t.tokens, sp.model_copy(update={"seed": 2, "routes_start": start}))
            t.add_generated(g2.tokens, g2.logprobs, g2.version, g2.routes)
            return g1, g2, start

    sampler = Sampler(model, record_routes=True, prefix_cache_mb=16)
    g1, g2, start = run_with(Server(sampler, tok, "m", routed_experts=True).app(), go)
    assert g1.routes.tokens == 4 + len(g1.tokens) and not g1.routes.known()[-1]
    assert start == 4 + len(g1.tokens) - 1  # all but the first turn's last token (no forward pass saw it)
    assert g2.routes.tokens == len(t.tokens) - start
    assert sampler.prefix_cache.hit_rate > 0  # the second turn's prefix came from the cache
    routes = t.routes()
    known = routes.known()
    assert known[:-1].all() and not known[-1]  # the very last token: no forward pass saw it
    np.testing.assert_array_equal(routes.array()[:-1], _own_routes(model, t.tokens)[:-1])

    async def without(url):
        async with HTTPEngine(url, "m", max_retries=0) as eng:
            await eng.generate([3, 4], sp)

    with pytest.raises(EngineError, match=r"returned no routed_experts.*enable-return-routed-experts"):
        run_with(Server(Sampler(model), tok, "m").app(), without)


def test_an_lm_agent_asks_only_for_the_routes_its_transcript_lacks(moe_path):
    """Each turn's request names, as ``routes_start``, how many leading tokens already have
    routes; with a server that honours it the episode's routes still end complete."""
    from eigen_core.contracts import Message
    from eigen_core.tokenizer import build_small_tokenizer
    from rollout.lm_agents import LMAgent

    model = load_hf(moe_path)
    tok = build_small_tokenizer(["route every token through its experts"] * 10, 200)
    sampler = Sampler(model, record_routes=True)
    asked = []

    class Recording:
        async def generate(self, prompt, sp):
            asked.append((len(prompt), sp.routes_start))
            return await sampler.generate(prompt, sp)

    sp = SamplingParams(max_new_tokens=4, seed=3, routes=RouteLayout.of(model.cfg))
    agent = LMAgent(Recording(), tok, sp, max_len=512)

    async def go():
        msgs = [Message(role="user", content="route every token")]
        msgs += [await agent.act(msgs, []), Message(role="user", content="and again")]
        await agent.act(msgs, [])

    asyncio.run(go())
    assert asked[0][1] == 0 and 0 < asked[1][1] < asked[1][0]
    t = agent.transcript
    k = t.routes_known()
    assert k >= len(t) - 2  # all but the last sampled token (and an eos closing a cut-off reply)
    np.testing.assert_array_equal(t.routes().array()[:k], _own_routes(model, t.tokens)[:k])


def _batch(sampler, seed):
    sp = [SamplingParams(max_new_tokens=10, seed=seed + i) for i in range(len(PROMPTS))]
    gens = sampler.generate_batch(PROMPTS, sp)
    adv = np.asarray([1.0, -1.0, 0.5, -0.5], np.float32)
    return build_batch(PROMPTS, gens, adv, 32, len(PROMPTS), 0)


def test_replay_recomputes_the_behaviour_logprobs_after_an_update_that_moves_routes(moe_path):
    g = GRPOSection(source="toy", routing_replay=True, optim={"lr": 3e-2}, eps_low=10, eps_high=10)
    update = GRPOUpdate(g, 0, load_hf(moe_path), 4)
    sampler = Sampler(update.learner.model(), record_routes=True)
    before = _batch(sampler, 0)
    for _ in range(2):
        update(before)
    graphdef = update.learner.graphdef
    stats = nnx.jit(lambda p, b: forward_stats(nnx.merge(graphdef, p), b))
    on = {k: jnp.asarray(v) for k, v in before.items()}
    taken = np.asarray(stats(update.learner.state.params, on)[2].experts)
    known = before["routes_known"] > 0
    moved = np.any(np.sort(taken, -1) != np.sort(before["routes"], -1), -1)[known]
    assert moved.mean() > 0.05, "the update should move some routes"
    # replaying the old routes: the learner goes through exactly the recorded experts
    replayed = np.asarray(
        stats(update.learner.state.params, {**on, "replay": on["routes_known"] > 0})[2].experts
    )
    np.testing.assert_array_equal(replayed[known], before["routes"][known])
    # the update's own metric: routes the learner would take differently (replay off)
    g_off = g.model_copy(update={"routing_replay": False})
    probe = GRPOUpdate(g_off, 0, update.learner.model(), 4)
    assert probe(before)["route_mismatch_frac"] == pytest.approx(moved.mean(), abs=1e-6)
    # the sampler serves the new weights: replay recomputes its behaviour logprobs
    sampler.update_weights(update.learner.state.params)
    after = _batch(sampler, 100)
    b = {k: jnp.asarray(v) for k, v in after.items()}
    b["replay"] = b["routes_known"] > 0
    logp = jax.jit(lambda p, x: sequence_logprobs(nnx.merge(graphdef, p), x))
    lp = np.asarray(logp(update.learner.state.params, b))
    m = after["loss_mask"] > 0
    np.testing.assert_allclose(lp[m], after["behaviour_logp"][m], atol=1e-4)


def test_replay_is_refused_where_it_cannot_work(tmp_path):
    dense = load_hf(write_tiny("qwen3", tmp_path)[1])
    with pytest.raises(ValueError, match=r"grpo\.routing_replay: the model has no MoE layers"):
        GRPOUpdate(GRPOSection(source="toy", routing_replay=True), 0, dense, 2)


MOE_ARCH = (
    "model.arch={head_dim: 32, model_type: qwen3_moe, num_experts: 8, num_experts_per_tok: 2,"
    " moe_intermediate_size: 64, output_router_logits: true}"
)


def _run_cfg(tmp, *overrides):
    from pathlib import Path

    from eigen_core.configio import load_config
    from eigen_jax.config import RunConfig

    base = [
        f"run.out_dir={tmp}", f"pool.dir={tmp}/pool", "run.progress=false", "procedural.num_tasks=40",
        "episode.turn_tokens=24", "episode.max_len=512", "episode.max_steps=4", "grpo.steps=2",
        "grpo.tasks_per_step=2", "grpo.group_size=2", "grpo.filter_groups=false", "grpo.heldout.every=null",
        "checkpoint.every=2", MOE_ARCH,
    ]  # fmt: skip
    return load_config(RunConfig, Path(__file__).parents[1] / "configs/quickstart.yaml", [*base, *overrides])


def _rows(path):
    import json

    return [json.loads(x) for x in path.read_text().splitlines()]


def test_grpo_episodes_on_a_tiny_moe_report_route_mismatch(tmp_path):
    """The quickstart with one override (model.arch naming MoE fields): episodes carry the
    sampler's routes into the update, which reports how many the learner would route otherwise."""
    from eigen_jax.train import run

    run(_run_cfg(tmp_path, "run.stages=[generate,grpo]", "episode.user=scripted"))
    rows = _rows(tmp_path / "grpo/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["route_mismatch_frac"] <= 1.0 and r["balance_loss"] > 0
    cfg = (tmp_path / "grpo/hf/config.json").read_text()
    assert '"model_type": "qwen3_moe"' in cfg and '"num_experts": 8' in cfg


@pytest.mark.slow
def test_sft_and_grpo_with_routing_replay_on_a_tiny_moe(tmp_path):
    """SFT of the user and the agent, then GRPO with routing replay, on the tiny MoE."""
    from eigen_jax.train import run

    summary = run(
        _run_cfg(
            tmp_path,
            "run.stages=[generate,sft_user,sft_agent,grpo]",
            "grpo.routing_replay=true",
            "sft_user.steps=6",
            "sft_agent.steps=6",
            "sft_user.max_len=384",
            "sft_agent.max_len=512",
            "sft_user.eval_every=6",
            "sft_agent.eval_every=6",
            "sft_user.eval_batches=1",
            "sft_agent.eval_batches=1",
        )
    )
    for stage in ("sft_user", "sft_agent"):
        rows = _rows(tmp_path / f"{stage}/metrics.jsonl")
        assert len(rows) == 6 and all(r["balance_loss"] > 0 for r in rows)
    rows = _rows(tmp_path / "grpo/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all("route_mismatch_frac" not in r for r in rows)  # replayed: the learner takes the sampler's
    assert summary["grpo"]["steps"] == 2


@pytest.mark.slow
def test_grpo_with_routing_replay_through_rollout_servers(tmp_path):
    """The learner, two rollout servers and a policy engine that returns routed experts as vLLM
    does (``eigen_jax.serve --enable-return-routed-experts``): the servers' trajectories carry
    the routes and the update replays them."""
    from rollout_topology import ROOT, pool_and_agent, topology

    from eigen_core.configio import load_config
    from eigen_jax.config import RunConfig
    from eigen_jax.train import run

    moe = {"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
    pool_and_agent(tmp_path, {**moe, "head_dim": 32})
    routed = ("--enable-return-routed-experts",)
    with topology(tmp_path, 0.0, routed, ("episode.max_len=4096",)) as (_, ports):
        cfg = load_config(
            RunConfig,
            ROOT / "configs/quickstart.yaml",
            [
                f"run.out_dir={tmp_path}/run", f"pool.dir={tmp_path}/run/pool", "run.progress=false",
                "run.stages=[grpo]", f"model.hf_dir={tmp_path / 'agent'}",
                f"model.tokenizer={tmp_path / 'tok'}", "episode.user=scripted", "episode.turn_tokens=16",
                "episode.max_steps=3", "episode.prompt=full", "episode.max_len=4096",
                "grpo.steps=2", "grpo.tasks_per_step=2", "grpo.group_size=2", "grpo.filter_groups=false",
                "grpo.episodes.deterministic=false", "grpo.heldout.every=null", "grpo.routing_replay=true",
                f"grpo.remote.servers=[http://127.0.0.1:{ports['f1']},http://127.0.0.1:{ports['f2']}]",
                f"grpo.remote.agent.url=http://127.0.0.1:{ports['fe']}", "grpo.remote.agent.model=agent",
            ],
        )  # fmt: skip
        assert run(cfg)["grpo"]["steps"] == 2
    rows = _rows(tmp_path / "run/grpo/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["agent_tokens"] > 0 for r in rows)
    # every token but each episode's very last (no forward pass saw it) was replayed
    assert all(0.9 < r["replayed_frac"] < 1.0 for r in rows)
    assert all("route_mismatch_frac" not in r for r in rows)
