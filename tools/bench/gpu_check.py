"""The accelerator check: what CPU tests cannot show, measured on the GPU this runs on.

    python tools/bench/gpu_check.py [--write] [--vllm-python PY] [--quick]

Run by ``tools/gpu_check.sh`` (which sets up a CUDA JAX environment first). On JAX's default
backend:

1. HF parity: a tiny random Qwen3 written by transformers; our logits (fp32, highest matmul
   precision) against transformers' on a padded batch (bar: 1e-4).
2. Attention: ``dense``, ``blockwise`` and, on a GPU, ``cudnn`` (bf16) against an fp32 dense
   reference, values and gradients; fwd+bwd time of each (median of 5).
3. Learner step: one SFT update (``Learner.update``, bf16 compute, fp32 Adam) of a ~1B Qwen3
   (``--quick``: a tiny one); tokens/s and MFU against the chip's bf16 peak (``plan.CHIPS``)
   and against a measured bf16 matmul.
4. Sampler: greedy decode tokens/s of the embedded sampler (batch 64, prompt 128, 128 new).
5. vLLM weight sync (``--vllm-python``: the python of an environment with vLLM): the weight-sync
   test of ``tests/test_vllm.py`` against that server (run first, while the GPU is free).

``--write`` puts the figures in BENCHMARKS.md's "GPU check" section; without a GPU it refuses to
(a CPU run checks the script, not the hardware). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

import jax
import jax.numpy as jnp
import numpy as np
from _report import machine, median_time, write_section

ROOT = Path(__file__).parents[2]

BILLION = dict(
    vocab_size=151_936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=16,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128,
)  # fmt: skip
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
)  # fmt: skip


def hf_parity(root: Path) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from eigen_jax.model import positions_from_mask
    from eigen_jax.model.hf import load_hf

    torch.manual_seed(0)
    ref = Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=False, **TINY)).eval()
    ref.save_pretrained(root / "parity")
    ids = np.random.default_rng(0).integers(0, 500, (3, 24))
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    with jax.default_matmul_precision("highest"):
        model = load_hf(root / "parity")
        got, _ = model(jnp.asarray(ids), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    err = float(np.abs(np.asarray(got) - want)[mask.astype(bool)].max())
    return {"max_abs_logit_diff": err, "ok": err < 1e-4}


def attention(quick: bool) -> dict:
    from eigen_jax.model.attention import AttnMask, attend

    b, t, nh, nkv, d = (2, 256, 4, 2, 64) if quick else (4, 4096, 16, 8, 128)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32) for n in (nh, nkv, nkv))
    valid = np.ones((b, t), bool)
    valid[1, t - t // 3 :] = False  # a right-padded row
    mask = AttnMask(jnp.arange(t), jnp.asarray(valid))
    real = jnp.asarray(valid, jnp.float32)[..., None, None]

    def loss(impl):
        return lambda q, k, v: (attend(q, k, v, mask, impl) * real).sum()

    with jax.default_matmul_precision("highest"):
        want = jax.jit(lambda *a: attend(*a, mask, "dense"))(q, k, v)
        want_g = jax.jit(jax.grad(loss("dense")))(q, k, v)
    impls = ["dense", "blockwise"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
    out = {"shape": [b, t, nh, nkv, d]}
    for impl in impls:
        qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
        got = jax.jit(lambda *a, impl=impl: attend(*a, mask, impl))(qb, kb, vb)
        step = jax.jit(jax.grad(loss(impl)))
        g = step(qb, kb, vb)
        sec, _ = median_time(lambda step=step, a=(qb, kb, vb): jax.block_until_ready(step(*a)), 5)
        scale = float(jnp.abs(want).max())
        err = float(jnp.abs(got - want)[jnp.asarray(valid)].max()) / scale
        gerr = float(jnp.abs(g.astype(jnp.float32) - want_g).max() / jnp.abs(want_g).max())
        ok = err < 3e-2 and gerr < 3e-2  # bf16 against an fp32 reference
        out[impl] = {"rel_err": err, "grad_rel_err": gerr, "fwd_bwd_ms": sec * 1e3, "ok": ok}
    return out


def learner_step(quick: bool) -> dict:
    from types import SimpleNamespace

    from flax import nnx
    from sampler import matmul_peak, train_flops_per_token

    from eigen_jax.learner import Learner, make_optimizer
    from eigen_jax.model import Decoder, DecoderConfig
    from eigen_jax.objectives import SFTLoss
    from eigen_jax.plan import chip_of
    from eigen_jax.train_config import OptimSection

    arch = TINY if quick else BILLION
    rows, length = (4, 128) if quick else (8, 2048)
    cfg = DecoderConfig.from_hf({"model_type": "qwen3", "tie_word_embeddings": True, **arch})
    model = Decoder(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    gpu = jax.default_backend() == "gpu"
    model.use_attention("cudnn" if gpu else "blockwise")
    model.logits_chunk = 1024
    learner = Learner(model, make_optimizer(OptimSection(lr=1e-5), 10), SFTLoss())
    tokens = np.random.default_rng(0).integers(0, arch["vocab_size"], (rows, length))
    ones = np.ones_like(tokens)
    batch = learner.put({"tokens": tokens, "attn_mask": ones, "loss_mask": ones})
    denom = SFTLoss().denom(batch)
    learner.update(batch, denom)  # compile
    sec, _ = median_time(lambda: learner.update(batch, denom), 3 if quick else 5)
    flops = train_flops_per_token(SimpleNamespace(**arch), length) * rows * length
    chip, _, peak = chip_of(jax.devices()[0].device_kind)
    measured = matmul_peak(1024 if quick else 8192)
    return {
        "model_params_m": sum(x.size for x in jax.tree.leaves(learner.state.params)) / 1e6,
        "rows_x_tokens": [rows, length],
        "attention": model.attention,
        "tokens_per_s": rows * length / sec,
        "step_s": sec,
        "mfu_vs_chip_peak": flops / sec / peak if peak else None,
        "mfu_vs_measured_matmul": flops / sec / measured,
        "measured_bf16_matmul_tflops": measured / 1e12,
        "chip": chip,
        "ok": True,
    }


def sampler_decode(quick: bool) -> dict:
    from flax import nnx

    from eigen_jax.model import Decoder, DecoderConfig
    from eigen_jax.sampler import Sampler
    from rollout.engine import SamplingParams

    arch = TINY if quick else BILLION
    cfg = DecoderConfig.from_hf({"model_type": "qwen3", "tie_word_embeddings": True, **arch})
    model = Decoder(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    batch, prompt, new = (8, 32, 16) if quick else (64, 128, 128)
    sampler = Sampler(model, pad_id=0)
    ps = np.random.default_rng(0).integers(1, arch["vocab_size"], (batch, prompt)).tolist()
    sp = SamplingParams(temperature=0.0, max_new_tokens=new)
    sampler.generate_batch(ps, sp)
    sec, _ = median_time(lambda: sampler.generate_batch(ps, sp), 3)
    return {"batch_prompt_new": [batch, prompt, new], "decode_tokens_per_s": batch * new / sec, "ok": True}


def vllm_sync(py: str) -> dict:
    # First, before this process touches the GPU: vLLM takes most of its memory for the KV cache,
    # and the test's own JAX side (our sampler, the reference weights) runs on CPU.
    env = {**os.environ, "EIGEN_VLLM_PYTHON": py, "JAX_PLATFORMS": "cpu"}
    test = ["tests/test_vllm.py", "-k", "weight_sync_matches"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "slow", *test]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return {"ok": out.returncode == 0, "tail": out.stdout[-600:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="record the figures in BENCHMARKS.md (GPU only)")
    ap.add_argument("--vllm-python", help="python of an environment with vLLM, for the weight-sync check")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU path of tools/gpu_check.sh)")
    args = ap.parse_args()
    sync = None
    if args.vllm_python:
        print("[gpu_check] vllm_weight_sync ...", file=sys.stderr, flush=True)
        sync = vllm_sync(args.vllm_python)
    device = jax.devices()[0]
    print(f"[gpu_check] backend {jax.default_backend()}, {device.device_kind}", file=sys.stderr, flush=True)
    results: dict = {"backend": jax.default_backend(), "device": device.device_kind}
    if sync is not None:
        results["vllm_weight_sync"] = sync
    with tempfile.TemporaryDirectory() as tmp:
        checks = [
            ("hf_parity", lambda: hf_parity(Path(tmp))),
            ("attention", lambda: attention(args.quick)),
            ("learner_step", lambda: learner_step(args.quick)),
            ("sampler", lambda: sampler_decode(args.quick)),
        ]
        for name, check in checks:
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            results[name] = check()
    failed = [n for n, r in results.items() if isinstance(r, dict) and _failed(r)]
    print(json.dumps(results, indent=2))
    if args.write:
        if results["backend"] != "gpu":
            print("[gpu_check] not writing BENCHMARKS.md: no GPU ran these checks", file=sys.stderr)
        else:
            body = f"Command: `bash tools/gpu_check.sh`. Machine: {machine()}, {device.device_kind}.\n\n"
            body += "```json\n" + json.dumps(results, indent=2) + "\n```\n"
            write_section("gpu-check", body)
    if failed:
        print(f"[gpu_check] FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _failed(r: dict) -> bool:
    return r.get("ok") is False or any(isinstance(v, dict) and v.get("ok") is False for v in r.values())


if __name__ == "__main__":
    sys.exit(main())
