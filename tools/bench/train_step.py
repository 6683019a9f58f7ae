"""Learner step throughput: SFT and GRPO update steps, eigen-jax vs peers, on the same config and batch.

    python tools/bench/train_step.py [--configs tiny,100m] [--batch 8x128+256] [--repeats 3]
                                     [--trl-python /tmp/trlenv/bin/python]
                                     [--tunix-python /tmp/tunixenv/bin/python]

One step = loss + backward + clip(1.0) + AdamW, in fp32 (bf16 matmul speed on these CPUs swings
2-3x between runs; fp32 repeats), on a batch of N sequences of a P-token prompt and a ragged
completion of up to C tokens (right-padded), loss on the completion tokens only:

* eigen-jax: ``Learner.update`` with ``SFTLoss`` / ``GRPOLoss`` (decoupled PPO, token mean).
* torch: the same math written plainly on transformers' Qwen3 (no trainer around it).
* TRL: ``GRPOTrainer.compute_loss`` (loss_type "bnpo" = token mean) and ``SFTTrainer.compute_loss``,
  in their own venv (``--trl-python``; see BENCHMARKS.md for its install line).
* tunix: ``algo_core.grpo_loss_fn`` and the PEFT trainer's default loss under ``nnx.value_and_grad``
  + optax, in their own venv (``--tunix-python``: tunix pins safetensors<0.8).

Each engine runs in a process of its own, one at a time (the parent only waits: an idle JAX or
torch runtime in the measuring process would steal a core from the peer). Each figure is the
median of ``--repeats`` steps after a warm-up step (which compiles, for the JAX engines).
Tokens/s counts every token of the batch (the forward and backward run over all of them); MFU is
against this machine's fp32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

import jax.numpy as jnp
import numpy as np
import torch
from _report import machine, median_time, write_section
from sampler import CONFIGS, QWEN_VOCAB, build, matmul_peak, train_flops_per_token
from transformers import Qwen3ForCausalLM

from eigen_jax.learner import Learner, make_optimizer
from eigen_jax.model.hf import load_hf
from eigen_jax.objectives import GRPOLoss, SFTLoss
from eigen_jax.train_config import OptimSection

VOCAB = QWEN_VOCAB
LOSSES = ("sft", "grpo")


def make_batch(n: int, prompt: int, completion: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids avoid 0 (the pad id tunix infers masks from); padded completion slots hold 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(completion * 3 // 4, completion + 1, n)
    cmask = (np.arange(completion)[None] < lengths[:, None]).astype(np.int32)
    return {
        "prompt_ids": rng.integers(2, VOCAB - 1000, (n, prompt)).astype(np.int32),
        "prompt_mask": np.ones((n, prompt), np.int32),
        "completion_ids": (rng.integers(2, VOCAB - 1000, (n, completion)) * cmask).astype(np.int32),
        "completion_mask": cmask,
        "advantages": rng.normal(size=n).astype(np.float32),
        # Near a random-init model's logprobs (-ln V), so ratios sit inside the clip range.
        "old_logp": (-np.log(VOCAB) + 0.05 * rng.normal(size=(n, completion))).astype(np.float32),
    }


def ours(path: Path, b: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """eigen-jax's ``Learner.update`` (SFT, then GRPO), fp32."""
    tokens = np.concatenate([b["prompt_ids"], b["completion_ids"]], 1)
    attn = np.concatenate([b["prompt_mask"], b["completion_mask"]], 1)
    loss_mask = np.concatenate([np.zeros_like(b["prompt_mask"]), b["completion_mask"]], 1)
    # Per-token arrays are aligned with the token they score (objectives.py).
    old = np.concatenate([np.zeros(b["prompt_ids"].shape, np.float32), b["old_logp"]], 1)
    host = {"tokens": tokens, "attn_mask": attn, "loss_mask": loss_mask}
    grpo = {**host, "advantages": b["advantages"], "behaviour_logp": old, "prox_logp": old}
    out = {}
    for name, loss_fn, batch in (("sft", SFTLoss(), host), ("grpo", GRPOLoss(), grpo)):
        model = load_hf(path, dtype=jnp.float32, param_dtype=jnp.float32)
        learner = Learner(model, make_optimizer(OptimSection(lr=1e-6), 10), loss_fn)
        dev = learner.put(batch)
        denom = loss_fn.denom(dev)
        learner.update(dev, denom)  # compiles
        out[name], _ = median_time(lambda: learner.update(dev, denom), repeats)  # noqa: B023
    return out


def plain_torch(path: Path, b: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """The same losses written plainly in torch on transformers' Qwen3, fp32."""
    torch.set_num_threads(os.cpu_count() or 1)
    model = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32)
    t = {k: torch.from_numpy(v) for k, v in b.items()}
    ids = torch.cat([t["prompt_ids"], t["completion_ids"]], 1).long()
    attn = torch.cat([t["prompt_mask"], t["completion_mask"]], 1).long()
    p, m = t["prompt_ids"].shape[1], t["completion_mask"].float()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def logp():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, p - 1 : -1]
        return torch.log_softmax(logits, -1).gather(-1, ids[:, p:, None])[..., 0]

    def grpo():
        ratio = torch.exp(logp() - t["old_logp"])
        adv = t["advantages"][:, None]
        per_token = -torch.min(ratio * adv, ratio.clamp(0.6, 1.4) * adv)
        return (per_token * m).sum() / m.sum()

    def sft():
        return -(logp() * m).sum() / m.sum()

    out = {}
    for name, loss in (("sft", sft), ("grpo", grpo)):

        def step(loss=loss):
            opt.zero_grad()
            loss().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        step()
        out[name], _ = median_time(step, repeats)
    return out


def worker(name: str, spec_path: str) -> None:
    """``--worker``: run one in-venv engine and print its RESULT line."""
    spec = json.load(open(spec_path))
    b = dict(np.load(spec["batch"]))
    fn = {"eigen-jax": ours, "torch": plain_torch}[name]
    print("RESULT " + json.dumps(fn(Path(spec["model"]), b, spec["repeats"])), flush=True)


def peer(cmd: list[str], spec: dict) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    run = subprocess.run([*cmd, f.name], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
        return {}
    line = next(ln for ln in reversed(run.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,100m")
    ap.add_argument("--batch", default="8x128+256", help="N x prompt + completion")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trl-python", default=None)
    ap.add_argument("--tunix-python", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    n, rest = args.batch.split("x")
    prompt, completion = (int(x) for x in rest.split("+"))
    root = Path(tempfile.mkdtemp())
    peak = matmul_peak(dtype=jnp.float32)
    print(f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    engines = ["eigen-jax", "torch"] + ["TRL"] * bool(args.trl_python) + ["tunix"] * bool(args.tunix_python)
    rows = []
    for name in args.configs.split(","):
        hf, path = build(name, root, torch.float32)
        dims = CONFIGS[name]
        b = make_batch(int(n), prompt, completion)
        np.savez(root / "batch.npz", **b)
        spec = {"model": str(path), "dims": dims, "batch": str(root / "batch.npz"), "repeats": args.repeats}
        here = Path(__file__).parent
        cmds = {
            "eigen-jax": [sys.executable, __file__, "--worker", "eigen-jax"],
            "torch": [sys.executable, __file__, "--worker", "torch"],
            "TRL": [args.trl_python, str(here / "_trl_step.py")],
            "tunix": [args.tunix_python, str(here / "_tunix_step.py")],
        }
        times = {}
        for engine in engines:
            times[engine] = peer(cmds[engine], spec)
            print(name, engine, times[engine], flush=True)
        total = int(n) * (prompt + completion)
        flops = train_flops_per_token(hf.config, prompt + completion) * total
        for loss in LOSSES:
            rows.append((name, loss, {e: times[e].get(loss) for e in engines}, total, flops))

    def cell(t: float | None, total: int, flops: float, ref: float) -> str:
        # The peer's step time over eigen-jax's (ref): above 1, eigen-jax is faster.
        if t is None:
            return "failed | — | —"
        return f"{total / t:,.0f} | {flops / t / peak:.1%} | {t / ref:.2f}×"

    head = " | ".join(f"{e} tok/s | MFU | vs eigen-jax" for e in engines[1:])
    table = [
        f"| config | loss | eigen-jax tok/s | MFU | {head} |",
        "|---|---|" + "---:|" * (2 + 3 * (len(engines) - 1)),
    ]
    for name, loss, t, total, flops in rows:
        ref = t["eigen-jax"]
        cells = [f"{total / ref:,.0f} | {flops / ref / peak:.1%}"]
        cells += [cell(t[e], total, flops, ref) for e in engines[1:]]
        table.append(f"| {name} | {loss} | " + " | ".join(cells) + " |")
    cmd = " ".join(["python tools/bench/train_step.py", *sys.argv[1:]])
    body = f"""## Learner step: SFT and GRPO, eigen-jax vs torch, TRL and tunix

`{cmd}` — {machine()}, {time.strftime("%Y-%m-%d")}.
Random-init Qwen3 (151,669-token vocab, tied embeddings): `tiny` = 256 hidden × 4 layers, `100m` =
768 × 12. One step = loss + backward + clip 1.0 + AdamW, fp32, batch {n} × ({prompt} prompt + ≤ {completion}
ragged completion tokens), loss on completion tokens; median of {args.repeats} steps after a warm-up, every
engine in this run. Tokens/s counts all tokens of the batch; MFU is against the fp32 matmul peak
measured in this run ({peak / 1e9:,.0f} GFLOP/s). *vs eigen-jax* = the peer's step time ÷ eigen-jax's
(above 1: eigen-jax is faster). *torch* is the same loss written plainly on transformers' model;
*TRL* is `GRPOTrainer.compute_loss` (loss_type bnpo) / `SFTTrainer.compute_loss` 1.16; *tunix* is
google-tunix 0.1.7's GRPO loss / PEFT default loss under `nnx.value_and_grad` + optax.

{chr(10).join(table)}
"""
    print(body)
    write_section("train_step", body)


if __name__ == "__main__":
    main()
