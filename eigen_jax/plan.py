"""``python -m eigen_jax.plan --config C --topology v5p:4x4x4`` (any libtpu topology name), or
``--devices N --device-kind cpu`` for this host's own devices: will the learner's update step fit?

Compiles the update step of a learner stage (``--stage``: sft_agent, sft_user, pretrain, grpo)
ahead of time for the config's model, batch, sequence length, micro-batches and mesh, on the
target's devices, without allocating a parameter: TPU topologies through libtpu's compile-only
client (no TPU needed; ``tools/setup_env.sh tpu`` or ``pip install "jax[tpu]==0.10.2"``), the
host's CPU devices directly. Prints per device: parameter, optimiser-state, batch, temporary and
total bytes against the chip's memory (XLA's memory analysis of the compiled step); the update's
model FLOPs (``model_flops``) and the step time at the chip's peak (the bound MFU = 1 gives).
Exits 1 when it does not fit, naming the changes that would help (more ``fsdp`` in
``model.mesh``, more micro-batches, a memory-efficient attention, LM-head chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigen_core.configio import add_config_args, config_from_args
from eigen_jax.config import RunConfig
from eigen_jax.plan_report import advice, table
from eigen_jax.train import LEARNER_STAGES

CHIPS: dict[str, tuple[float, float]] = {
    "v5p": (95 * 2**30, 459e12),
    "v6e": (32 * 2**30, 918e12),
    "v5e": (16 * 2**30, 197e12),
    "v5litepod": (16 * 2**30, 197e12),
    "v4": (32 * 2**30, 275e12),
    "h100": (80e9, 989e12),
    "h200": (141e9, 989e12),
}
"""Chip -> (memory bytes, peak dense bf16 FLOP/s), vendor figures (REFERENCE.md)."""


@dataclass
class StageShape:
    """What one update of a stage processes."""

    rows: int
    length: int
    micro_batches: int
    keys: dict[str, str]
    """Batch key -> dtype; every key is [rows, length] but ``advantages`` ([rows])."""


def stage_shape(cfg: RunConfig, stage: str) -> StageShape:
    """The update's batch of ``stage`` as ``cfg`` runs it."""
    sft_keys = {"tokens": "int32", "attn_mask": "int32", "loss_mask": "int32"}
    if stage == "pretrain":
        return StageShape(cfg.pretrain.batch_size, cfg.pretrain.seq_len, 1, sft_keys)
    if stage in ("sft_user", "sft_agent"):
        s = getattr(cfg, stage)
        return StageShape(s.batch_size, s.max_len, s.micro_batches, sft_keys)
    g = cfg.grpo
    length = g.toy.prompt_len + g.toy.max_new_tokens if g.source == "toy" else cfg.episode.max_len
    keys = {**sft_keys, "behaviour_logp": "float32", "prox_logp": "float32", "advantages": "float32"}
    if g.kl_coef > 0:
        keys["ref_logp"] = "float32"
    return StageShape(g.tasks_per_step * g.group_size // g.minibatches, length, g.micro_batches, keys)


DEVICE_KINDS = {"tpuv5": "v5p", "tpuv5lite": "v5e", "tpuv6lite": "v6e"}
"""libtpu's ``device_kind`` (spaces removed, lower case) -> our name, where it does not contain
our name ("TPU v4" and "TPU v5p" do: the search below finds them)."""


def chip_of(kind: str) -> tuple[str, float | None, float | None]:
    """(name, memory bytes, peak FLOP/s) of a device kind ("TPU v5", "TPU v6 lite", "cpu",
    "NVIDIA H100 ...") or of a chip name ("v6e", "h200")."""
    k = kind.lower().replace(" ", "")
    if k in DEVICE_KINDS:
        return DEVICE_KINDS[k], *CHIPS[DEVICE_KINDS[k]]
    for name in sorted(CHIPS, key=len, reverse=True):
        if name in k:
            return name, *CHIPS[name]
    return kind, None, None


def _devices(args: argparse.Namespace) -> list[Any]:
    if args.topology:
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")  # quiets libtpu's probe; compile-only
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # a compile-only client owns no TPU: let several plans (and a test) run side by side
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        from jax.experimental import topologies

        try:
            topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
        except Exception as e:  # libtpu missing, or a name it does not know
            raise SystemExit(
                f"plan: cannot describe TPU topology {args.topology!r} ({type(e).__name__}: {e}). It needs "
                'libtpu: tools/setup_env.sh tpu (or pip install "jax[tpu]==0.10.2").'
            ) from None
        return list(topo.devices)
    import jax

    devs = jax.devices(args.device_kind)
    if len(devs) < args.devices:
        raise SystemExit(f"plan: {args.devices} {args.device_kind} devices asked for, {len(devs)} here")
    return devs[: args.devices]


def _vocab(cfg: RunConfig) -> int:
    """The vocabulary a from-scratch model of ``cfg`` gets (as ``stages.common.base_model`` sizes
    it: the tokenizer's, rounded up to a multiple of 64); ``small`` is taken at its configured
    size, since it is trained only when the run starts."""
    from eigen_jax.stages.common import padded_vocab

    m = cfg.model
    if m.tokenizer == "small":
        size = m.small_vocab_size
    else:
        from eigen_core.tokenizer import Tokenizer, qwen3_tokenizer_dir

        size = Tokenizer.from_dir(qwen3_tokenizer_dir() if m.tokenizer == "qwen3" else m.tokenizer).vocab_size
    return padded_vocab(size)


def _abstract_state(cfg: RunConfig, stage: str, mesh: Any, vocab: int):
    """(graphdef, abstract TrainState with shardings, optimiser, arch) of the stage's model."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from eigen_jax.learner import TrainState, make_optimizer, place_opt_state
    from eigen_jax.model import Decoder, DecoderConfig
    from eigen_jax.model.sharding import param_name, spec_for
    from eigen_jax.stages.common import DTYPES, configure

    m = cfg.model
    hf = (
        json.loads((Path(m.hf_dir) / "config.json").read_text())
        if m.hf_dir
        else {**m.arch, "vocab_size": vocab}
    )
    arch = DecoderConfig.from_hf(hf)
    dtype, pdtype = DTYPES[m.dtype], DTYPES[m.param_dtype]
    abstract = nnx.eval_shape(lambda: Decoder(arch, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=pdtype))
    graphdef, params = nnx.split(configure(abstract, m, mesh))

    def place(path, leaf):
        spec = spec_for(param_name(tuple(path)), leaf.shape, arch.family, mesh)
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

    params = nnx.map_state(lambda path, v: v.replace(place(path, v.get_value())), params)
    section = cfg.grpo if stage == "grpo" else getattr(cfg, stage)
    tx = make_optimizer(section.optim, section.steps)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = place_opt_state(
        tx,
        jax.eval_shape(tx.init, params),
        params,
        mesh,
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    )
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
    return graphdef, TrainState(params, opt, scalar, rng), tx, arch


def matmul_params(arch: Any) -> int:
    """Parameters that take part in a matmul per token: every projection and the LM head (the
    embedding lookup is free, a tied head still multiplies); in an MoE layer the router and the
    ``num_experts_per_tok`` experts a token is routed to (the *active* parameters)."""
    h, hd, nh, nkv = arch.hidden_size, arch.head_dim, arch.num_attention_heads, arch.num_key_value_heads
    attn = h * hd * (2 * nh + 2 * nkv)
    moe = len(arch.moe_layers)
    dense_ffn = 3 * h * arch.intermediate_size
    sparse_ffn = h * arch.num_experts + arch.num_experts_per_tok * 3 * h * arch.moe_intermediate_size
    ffn = (arch.num_hidden_layers - moe) * dense_ffn + moe * sparse_ffn
    return arch.num_hidden_layers * attn + ffn + arch.vocab_size * h


def model_flops(arch: Any, rows: int, length: int) -> float:
    """Training FLOPs of one update of ``rows`` sequences of ``length`` tokens: forward + backward
    (3 x the forward), no recomputation counted (the convention of MFU: PaLM, MaxText).

    Forward per sequence: 2 x ``matmul_params`` x length, plus causal attention's QK^T and PV,
    2 x heads x head_dim x length^2 per layer (half of the full square). XLA's own cost analysis
    cannot stand in: it counts a loop body once, and micro-batches, blockwise attention and
    LM-head chunks are loops.
    """
    attention = 2 * arch.num_hidden_layers * arch.num_attention_heads * arch.head_dim * length**2
    return 3.0 * (2 * matmul_params(arch) * length + attention) * rows


def _per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of the sharded ``tree`` (the largest shard of each leaf)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * leaf.dtype.itemsize
    return total


def _replay_arrays(arch: Any, shape: StageShape, mesh: Any) -> dict[str, Any]:
    """The GRPO batch's recorded routes and replay mask (``grpo.routing_replay``), abstract."""
    import jax
    import jax.numpy as jnp

    from eigen_jax.model.sharding import batch_sharding

    routes = (shape.rows, shape.length, len(arch.moe_layers), arch.num_experts_per_tok)
    rows = (shape.rows, shape.length)
    return {
        "routes": jax.ShapeDtypeStruct(routes, jnp.int32, sharding=batch_sharding(mesh, 4)),
        "routes_known": jax.ShapeDtypeStruct(rows, jnp.int32, sharding=batch_sharding(mesh, 2)),
        "replay": jax.ShapeDtypeStruct(rows, jnp.bool_, sharding=batch_sharding(mesh, 2)),
    }


def _moe_report(cfg: RunConfig, arch: Any, platform: str) -> dict[str, str] | None:
    """The MoE layers' grouped-matmul kernel and dispatch the compiled step used (None: dense)."""
    from eigen_jax.model.moe import kernel_for

    if not arch.moe_layers:
        return None
    return {"kernel": kernel_for(cfg.model.moe_kernel, platform), "dispatch": cfg.model.expert_dispatch}


def _compile(lowered: Any) -> tuple[str | None, float, int, int]:
    """(the compiler's refusal or None, XLA's FLOPs, temporaries, bytes of results that reuse no
    donated buffer) of a lowered step, per device."""
    import jax

    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a step that cannot fit
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return str(e).splitlines()[0], 0.0, 0, 0
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out = int(getattr(mem, "output_size_in_bytes", 0)) - int(getattr(mem, "alias_size_in_bytes", 0))
    return None, float((cost or {}).get("flops", 0.0)), int(getattr(mem, "temp_size_in_bytes", 0)), out


def plan(cfg: RunConfig, stage: str, devices: list[Any], chip: str | None = None) -> dict[str, Any]:
    """Compile ``stage``'s update for ``devices``; the per-device figures as a dict. ``chip`` (a
    ``CHIPS`` name) holds them against that chip instead of the devices' own kind: a stand-in
    compile on this host for hardware it does not have."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from eigen_jax.learner import DonatingUpdate, update_step
    from eigen_jax.model.sharding import batch_sharding, batch_ways, make_mesh
    from eigen_jax.objectives import GRPOLoss, SFTLoss

    mesh = make_mesh(cfg.model.mesh, devices)
    graphdef, state, tx, arch = _abstract_state(cfg, stage, mesh, _vocab(cfg))
    shape = stage_shape(cfg, stage)
    ways = batch_ways(mesh)
    if shape.rows % (ways * shape.micro_batches):
        raise SystemExit(
            f"plan: {shape.rows} rows per update do not split over data x fsdp x expert = {ways} devices x "
            f"{shape.micro_batches} micro-batches"
        )
    batch = {
        k: jax.ShapeDtypeStruct(
            (shape.rows,) if k == "advantages" else (shape.rows, shape.length),
            jnp.dtype(dt),
            sharding=batch_sharding(mesh, 1 if k == "advantages" else 2),
        )
        for k, dt in shape.keys.items()
    }
    g = cfg.grpo
    if stage == "grpo" and g.routing_replay and arch.moe_layers:
        batch.update(_replay_arrays(arch, shape, mesh))
    loss = (
        GRPOLoss(g.eps_low, g.eps_high, g.weight_cap, g.aggregation, g.kl_coef, g.temperature)
        if stage == "grpo"
        else SFTLoss(getattr(cfg, stage).aggregation if stage != "pretrain" else "token_mean")
    )
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    scalar_f = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    scalar_i = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    step = DonatingUpdate(update_step(graphdef, tx, loss, shape.micro_batches))
    chip, hbm, peak = chip_of(chip or devices[0].device_kind)
    params_b, opt_b = _per_device_bytes(state.params), _per_device_bytes(state.opt_state)
    batch_b = _per_device_bytes(batch)
    refused, xla_flops, temp_b, out_b = _compile(step.lower(state, batch, scalar_f, scalar_i))
    flops = model_flops(arch, shape.rows, shape.length) / len(devices)
    total = params_b + opt_b + batch_b + out_b + temp_b
    return {
        "compiler_refused": refused,
        "stage": stage,
        "devices": len(devices),
        "chip": chip,
        "compiled_for": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "model_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "rows": shape.rows,
        "length": shape.length,
        "micro_batches": shape.micro_batches,
        "attention": cfg.model.attention,
        "logits_chunk": cfg.model.logits_chunk,
        "remat": cfg.model.remat,
        "moe": _moe_report(cfg, arch, devices[0].platform),
        "bytes": {
            "params": params_b,
            "opt_state": opt_b,
            "batch": batch_b,
            "outputs": out_b,
            "temp": temp_b,
            "total": total,
        },
        "hbm_bytes": hbm,
        "fits": False if refused else None if hbm is None else total <= hbm,
        "flops_per_device": flops,
        "xla_flops_per_device": xla_flops,
        "step_s_at_peak": flops / peak if peak else None,
    }


def plan_sampler(cfg: RunConfig, devices: list[Any], chip: str | None = None) -> dict[str, Any]:
    """Compile the in-process sampler's generate call (prefill + the decode loop) for the
    episodes' worst turn: ``episode.concurrency`` rows (bucketed as the sampler does), a
    transcript of ``episode.max_len - episode.turn_tokens`` tokens, ``turn_tokens`` new ones,
    on the policy's weights as the learner holds them. The per-device figures as a dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from eigen_jax.model.sharding import make_mesh
    from eigen_jax.sampler import _generate, _Knobs, bucket

    mesh = make_mesh(cfg.model.mesh, devices)
    graphdef, state, _, arch = _abstract_state(cfg, "grpo", mesh, _vocab(cfg))
    ep = cfg.episode
    rows, new = bucket(ep.concurrency, 8), ep.turn_tokens
    prompt = -(-(ep.max_len - new) // 128) * 128
    rep = NamedSharding(mesh, P())

    def arr(shape, dtype):
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=rep)

    kv = (rows, 0, arch.num_key_value_heads, arch.head_dim)
    prefix = [(arr(kv, cfg.model.dtype), arr(kv, cfg.model.dtype)) for _ in range(arch.num_hidden_layers)]
    keys = jax.ShapeDtypeStruct((rows,), jax.random.key(0).dtype, sharding=rep)
    knobs = _Knobs(arr((rows,), "float32"), arr((rows,), "float32"), arr((rows,), "int32"))
    tokens = arr((rows, prompt), "int32")
    args = (
        state.params, prefix, arr((rows, 0), "int32"), tokens, tokens,
        keys, knobs, arr((rows, 4), "int32"), arr((rows,), "int32"), arr((rows,), "bool"),
    )  # fmt: skip
    refused, _, temp_b, out_b = _compile(_generate.lower(graphdef, *args, max_new=new))
    name, hbm, _ = chip_of(chip or devices[0].device_kind)
    params_b = _per_device_bytes(state.params)
    length = prompt + new
    itemsize = np.dtype(cfg.model.dtype).itemsize
    cache_b = 2 * arch.num_hidden_layers * rows * length * arch.num_key_value_heads * arch.head_dim * itemsize
    total = params_b + out_b + temp_b  # the cache is made inside the call: part of the temporaries
    attention = 4 * arch.num_hidden_layers * arch.num_attention_heads * arch.head_dim * length
    return {
        "compiler_refused": refused,
        "stage": "sample",
        "devices": len(devices),
        "chip": name,
        "compiled_for": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "rows": rows,
        "prompt": prompt,
        "new_tokens": new,
        "bytes": {"params": params_b, "kv_cache_whole": cache_b, "temp": temp_b, "total": total},
        "hbm_bytes": hbm,
        "fits": False if refused else None if hbm is None else total <= hbm,
        # the last decode step: every row reads the whole cache
        "flops_per_token": 2 * matmul_params(arch) + attention,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m eigen_jax.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", help="a libtpu topology name, e.g. v5p:4x4x4, v6e:8x8")
    where.add_argument("--devices", type=int, help="this host's devices: how many")
    ap.add_argument("--device-kind", default="cpu", help="with --devices: the platform (cpu, gpu)")
    ap.add_argument(
        "--chip",
        choices=sorted(CHIPS),
        help="hold the figures against this chip instead of the compiled-for one: a stand-in plan for "
        "hardware not at hand (e.g. --topology v5p:2x2x2 --chip h200 model.attention=blockwise for 8 "
        "GPUs: XLA:TPU's buffer assignment is close to the GPU compiler's, XLA:CPU's is not; confirm "
        "on the GPUs with --devices 8 --device-kind gpu)",
    )
    ap.add_argument(
        "--stage",
        choices=[*LEARNER_STAGES, "sample"],
        default="grpo",
        help="a learner stage's update, or sample: the in-process sampler's generate call for the "
        "episodes' longest turn",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if args.devices and args.device_kind == "cpu" and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    cfg = config_from_args(RunConfig, args, foreign_sections=())
    if args.stage == "sample":
        report = plan_sampler(cfg, _devices(args), args.chip)
    else:
        report = plan(cfg, args.stage, _devices(args), args.chip)
    print(json.dumps(report, indent=2) if args.json else table(report))
    if report["fits"] is False:
        helps = (
            "; ".join(advice(report))
            if args.stage != "sample"
            else "a smaller episode.concurrency or max_len"
        )
        print("does not fit; would help: " + helps, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
