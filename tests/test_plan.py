"""``eigen_jax.plan``: the learner's update compiled ahead of time, per-device memory and FLOPs,
on this host's devices and on a TPU topology through libtpu's compile-only client."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from eigen_core.configio import load_config
from eigen_jax.config import RunConfig
from eigen_jax.plan import CHIPS, chip_of, plan, plan_sampler
from eigen_jax.plan_report import advice

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs/quickstart.yaml"


def test_the_plan_counts_what_a_real_learner_holds_per_device():
    """Parameter and optimiser bytes per device equal those of a Learner actually placed on the
    same 8-device mesh; the compiled step reports FLOPs and temporaries."""
    from types import SimpleNamespace

    from eigen_jax.learner import Learner, make_optimizer
    from eigen_jax.objectives import SFTLoss
    from eigen_jax.stages.common import base_model, model_mesh

    cfg = load_config(RunConfig, QUICKSTART, ["model.mesh=[1,4,2]", "sft_agent.max_len=256"])
    report = plan(cfg, "sft_agent", jax.devices()[:8])
    tok = SimpleNamespace(vocab_size=cfg.model.small_vocab_size)  # what the plan sizes it at
    model = base_model(cfg.model, tok)  # type: ignore[arg-type]
    learner = Learner(model, make_optimizer(cfg.sft_agent.optim, 10), SFTLoss(), mesh=model_mesh(model))

    def per_device(tree):
        return sum(max(s.data.nbytes for s in leaf.addressable_shards) for leaf in jax.tree.leaves(tree))

    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}
    assert report["bytes"]["params"] == per_device(learner.state.params)
    assert report["bytes"]["opt_state"] == per_device(learner.state.opt_state)
    assert report["bytes"]["batch"] == 3 * 8 * 256 * 4 // 4  # three int32 [8, 256] arrays over fsdp 4
    assert report["flops_per_device"] > 0 and report["bytes"]["temp"] > 0
    # the new parameters are new buffers; the optimiser state was donated and updated in place
    b = report["bytes"]
    assert b["params"] <= b["outputs"] < b["params"] + b["opt_state"] / 2, b
    assert b["total"] == b["params"] + b["opt_state"] + b["batch"] + b["outputs"] + b["temp"]
    assert report["attention"] == "dense" and report["logits_chunk"] == 0
    assert report["fits"] is None  # a CPU device has no memory figure to hold it against


def test_model_flops_agree_with_xla_where_xla_can_count_them():
    """With no loop in the step (one micro-batch, dense attention, the LM head whole, no remat)
    XLA's cost analysis counts every FLOP: the analytic model FLOPs are its matmuls (XLA adds the
    masked half of the attention square and the element-wise work). With micro-batches the model
    FLOPs stay, XLA's count falls, since it counts the scan's body once."""
    over = ["sft_agent.max_len=128", "sft_agent.batch_size=8", "model.arch.hidden_size=256",
            "model.arch.intermediate_size=768", "model.arch.num_hidden_layers=2"]  # fmt: skip
    one = plan(load_config(RunConfig, QUICKSTART, over), "sft_agent", jax.devices()[:1])
    assert 1.0 < one["xla_flops_per_device"] / one["flops_per_device"] < 1.25, one
    four = plan(
        load_config(RunConfig, QUICKSTART, [*over, "sft_agent.micro_batches=4"]),
        "sft_agent",
        jax.devices()[:1],
    )
    assert four["flops_per_device"] == one["flops_per_device"]
    assert four["xla_flops_per_device"] < 0.5 * one["xla_flops_per_device"]


def test_the_sampler_plan_sizes_the_longest_turn_and_blockwise_prefill_needs_less():
    cfg = load_config(RunConfig, QUICKSTART, ["episode.concurrency=20", "episode.max_len=600"])
    dense = plan_sampler(cfg, jax.devices()[:4], chip="v5e")
    arch = cfg.model.arch
    assert dense["rows"] == 32 and dense["prompt"] == 640 and dense["new_tokens"] == cfg.episode.turn_tokens
    whole = 2 * arch["num_hidden_layers"] * 32 * (640 + dense["new_tokens"]) * arch["num_key_value_heads"]
    assert dense["bytes"]["kv_cache_whole"] == whole * arch["head_dim"] * 4  # fp32
    assert dense["chip"] == "v5e" and dense["fits"] is True and dense["bytes"]["temp"] > 0
    cfg = load_config(
        RunConfig, QUICKSTART, ["episode.concurrency=20", "episode.max_len=600", "model.attention=blockwise"]
    )
    lean = plan_sampler(cfg, jax.devices()[:4])
    assert lean["bytes"]["temp"] < dense["bytes"]["temp"]


def test_chips_and_advice():
    assert chip_of("TPU v5")[0] == "v5p" and chip_of("TPU v6 lite")[0] == "v6e"
    assert chip_of("TPU v5 lite")[0] == "v5e" and chip_of("TPU v4")[0] == "v4"
    assert chip_of("cpu") == ("cpu", None, None)
    assert chip_of("NVIDIA H100 80GB HBM3")[1] == CHIPS["h100"][0]
    big = {
        "bytes": {"params": 50, "opt_state": 40, "temp": 5, "batch": 1},
        "hbm_bytes": 100,
        "micro_batches": 1,
    }
    assert "fsdp" in advice(big)[0]
    act = {
        "bytes": {"params": 5, "opt_state": 5, "temp": 80, "batch": 1},
        "hbm_bytes": 100,
        "micro_batches": 2,
    }
    tips = advice(act)
    assert "micro-batches (now 2" in tips[0]
    assert any("model.attention: splash" in t for t in tips) and any("logits_chunk" in t for t in tips)
    assert not any(
        "model.attention" in t for t in advice({**act, "attention": "splash", "logits_chunk": 1024})
    )
    # 128 rows over 32 chips in 4 micro-batches is one row per chip: more micro-batches cannot help
    one_row = {**act, "rows": 128, "micro_batches": 4, "mesh": {"data": 1, "fsdp": 32, "tensor": 1}}
    assert "tensor parallelism" in advice(one_row)[0] and not any(
        "micro-batches (now" in t for t in advice(one_row)
    )
    assert "micro-batches (now 2" in advice({**one_row, "micro_batches": 2})[0]


def test_the_command_on_this_hosts_devices():
    out = subprocess.run(
        [sys.executable, "-m", "eigen_jax.plan", "--config", str(QUICKSTART), "--devices", "4",
         "--stage", "grpo", "--json", "grpo.source=toy", "grpo.tasks_per_step=4", "grpo.group_size=4"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "XLA_FLAGS": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["devices"] == 4 and report["rows"] == 16 and report["length"] == 9


def _libtpu_env() -> dict[str, str]:
    path = os.environ.get("EIGEN_LIBTPU_PATH") or str(ROOT / ".libtpu")
    if not (Path(path) / "libtpu").is_dir():
        pytest.skip("libtpu is not installed: bash tools/setup_libtpu.sh (CI does), or EIGEN_LIBTPU_PATH=DIR")
    return {**os.environ, "PYTHONPATH": path, "XLA_FLAGS": ""}


@pytest.mark.slow
def test_a_tiny_model_fits_a_v5p_slice_and_a_huge_one_is_refused_with_advice():
    env = _libtpu_env()
    cmd = [sys.executable, "-m", "eigen_jax.plan", "--config", str(QUICKSTART), "--topology", "v5p:2x2x1",
           "--stage", "sft_agent", "--json", "sft_agent.max_len=256"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["chip"] == "v5p" and report["devices"] == 4 and report["fits"] is True
    assert report["step_s_at_peak"] == pytest.approx(report["flops_per_device"] / CHIPS["v5p"][1])
    # the long-context options compile for the TPU: splash attention (Mosaic) under shard_map, the
    # LM head in chunks; at 2,048 tokens they need less than dense attention and the whole head
    long = [*cmd[:-1], "sft_agent.max_len=2048", "sft_agent.batch_size=8", "model.arch.head_dim=128"]
    dense = json.loads(subprocess.run(long, capture_output=True, text=True, cwd=ROOT, env=env).stdout)
    out = subprocess.run(
        [*long, "model.attention=splash", "model.logits_chunk=512"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lean = json.loads(out.stdout)
    assert lean["attention"] == "splash" and lean["bytes"]["temp"] < 0.5 * dense["bytes"]["temp"], (
        lean,
        dense,
    )
    # ~15B parameters in fp32 with Adam: ~42 GiB per chip on 4 v5e chips of 16 GiB
    arch = {"hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 4,
            "num_attention_heads": 128, "num_key_value_heads": 8, "head_dim": 128}  # fmt: skip
    huge = [f"model.arch.{k}={v}" for k, v in arch.items()]
    out = subprocess.run(
        [*cmd[:6], "v5e:2x2", *cmd[7:], *huge], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["fits"] is False and report["bytes"]["params"] + report["bytes"]["opt_state"] > 16 * 2**30
    assert "more fsdp" in out.stderr
    assert np.isclose(report["model_params"] / 1e9, 15.2, rtol=0.05)


def test_remat_keeps_the_gradients_and_shrinks_the_planned_temporaries():
    from flax import nnx

    from eigen_jax.model import Decoder, DecoderConfig
    from eigen_jax.train_config import TINY_ARCH

    model = Decoder(DecoderConfig.from_hf({**TINY_ARCH, "vocab_size": 128}), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 128)
    pos = jax.numpy.broadcast_to(jax.numpy.arange(16), (2, 16))

    def grads(policy):
        model.remat = policy
        g, params = nnx.split(model)

        def loss(p):
            logits, _ = nnx.merge(g, p)(tokens, pos)
            return jax.nn.log_softmax(logits).mean()

        return jax.grad(loss)(params)

    ref = jax.tree.leaves(grads("none"))
    for policy in ("full", "save_dots"):
        for a, b in zip(ref, jax.tree.leaves(grads(policy)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    base = ["sft_agent.max_len=1024", "sft_agent.batch_size=8", "model.arch.num_hidden_layers=4"]
    temps = {
        r: plan(
            load_config(RunConfig, QUICKSTART, [*base, f"model.remat={r}"]), "sft_agent", jax.devices()[:8]
        )["bytes"]["temp"]
        for r in ("none", "full")
    }
    assert temps["full"] < temps["none"], temps


def test_moe_flops_count_the_active_parameters():
    """30B-A3B: ~3B parameters multiply each token (8 of 128 experts, the router, attention and
    the LM head), ~30.5B in all."""
    import yaml

    from eigen_jax.model import DecoderConfig
    from eigen_jax.plan import matmul_params

    arch = yaml.safe_load((ROOT / "configs/paper/qwen3_30b_a3b_airline_v5p.yaml").read_text())["model"][
        "arch"
    ]
    cfg = DecoderConfig.from_hf({**arch, "vocab_size": 151936})
    assert cfg.moe_layers == tuple(range(48))
    assert np.isclose(matmul_params(cfg) / 1e9, 3.04, rtol=0.02)
    e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    experts = 48 * e * 3 * h * i
    assert np.isclose(experts / 1e9, 28.99, rtol=0.01)  # with attention, embeddings and head: 30.5B


@pytest.mark.slow
def test_a_tiny_moe_with_experts_split_and_routing_replay_compiles_for_a_v5p_slice():
    env = _libtpu_env()
    moe = ("model.arch={head_dim: 32, model_type: qwen3_moe, num_experts: 8, num_experts_per_tok: 2, "
           "moe_intermediate_size: 64}")  # fmt: skip
    cmd = [sys.executable, "-m", "eigen_jax.plan", "--config", str(QUICKSTART), "--topology", "v5p:2x2x1",
           "--stage", "grpo", "--json", moe, "model.mesh=[1,2,1,2]", "grpo.routing_replay=true",
           "grpo.tasks_per_step=2", "grpo.group_size=2", "episode.max_len=256"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["fits"] is True and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1, "expert": 2}
    assert report["moe"] == {"kernel": "megablox", "dispatch": "weights"}  # auto on TPU: the Pallas kernel
