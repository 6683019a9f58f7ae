"""Routing replay (R3) for MoE policies: the sampler records the experts of every token it
computes, trajectories carry them compactly, and the learner replays them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_models import write_tiny

from eigen_core.contracts import Termination, Trajectory
from eigen_core.routes import ExpertRoutes, padded_routes, width_for
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
    assert g2.routes.tokens < len(t.tokens) + len(g2.tokens)  # the cached prefix was not recomputed
    t.add_generated(g2.tokens, g2.logprobs, g2.version, g2.routes)
    routes = t.routes()
    assert routes.tokens == len(t.tokens) and routes.known().all()
    own = _own_routes(model, t.tokens)
    np.testing.assert_array_equal(routes.array(), own)  # fp32: the same experts either way
    t.add_context([1])
    assert not t.routes().known()[-1]  # context no call has computed yet


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
