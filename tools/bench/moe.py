"""MoE throughput: a small Qwen3-MoE against a dense Qwen3 with the same active parameters, and
against transformers' MoE on the same weights, side by side in one run.

    python tools/bench/moe.py [--repeats 5] [--batch 8x256] [--decode 16x64+64]

* learner step: SFT loss + backward + clip + AdamW (fp32), eigen-jax's ``Learner.update`` on the
  MoE (with the CPU's default grouped matmul, ``tiled``, and with XLA's ``ragged_dot``) and on the
  dense model, and the same step written plainly in torch on transformers'
  ``Qwen3MoeForCausalLM`` with the MoE's weights; tokens/s over every token of the batch.
* decode: eigen-jax's ``Sampler`` (greedy, fp32) on the MoE (both kernels) and on the dense model;
  new tokens/s.

The dense peer has every MoE layer's experts replaced by one MLP of ``top_k x moe_intermediate``
hidden units: the same matmul FLOPs per token (the router aside). Each engine runs in a process
of its own, one at a time; each figure is the median of ``--repeats`` after a warm-up.
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

import numpy as np
from _report import machine, median_time, write_section

ARCH = dict(
    vocab_size=32000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
)  # fmt: skip
MOE = dict(
    num_experts=16,
    num_experts_per_tok=4,
    moe_intermediate_size=256,
    norm_topk_prob=True,
    intermediate_size=1024,
)


def build(root: Path) -> dict[str, str]:
    """Random-init (seed 0) MoE and dense checkpoints under ``root``; their paths."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    moe = Qwen3MoeForCausalLM(Qwen3MoeConfig(**ARCH, **MOE)).eval()
    with torch.no_grad():  # transformers starts the router at zero: every expert would tie
        for name, p in moe.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 0.02)
    dense_mlp = MOE["num_experts_per_tok"] * MOE["moe_intermediate_size"]
    dense = Qwen3ForCausalLM(Qwen3Config(**ARCH, intermediate_size=dense_mlp)).eval()
    paths = {"moe": root / "moe", "dense": root / "dense"}
    moe.save_pretrained(paths["moe"])
    dense.save_pretrained(paths["dense"])
    return {k: str(v) for k, v in paths.items()}


def batch(n: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, ARCH["vocab_size"] - 1, (n, length)).astype(np.int32)
    return {"tokens": tokens, "attn_mask": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}


def jax_step(path: str, b: dict[str, np.ndarray], repeats: int, kernel: str = "auto") -> float:
    from eigen_jax.learner import Learner, make_optimizer
    from eigen_jax.model.hf import load_hf
    from eigen_jax.objectives import SFTLoss
    from eigen_jax.train_config import OptimSection

    learner = Learner(load_hf(path).use_experts(kernel), make_optimizer(OptimSection(lr=1e-6), 10), SFTLoss())
    dev = learner.put(b)
    denom = SFTLoss().denom(dev)
    learner.update(dev, denom)  # compiles
    return median_time(lambda: learner.update(dev, denom), repeats)[0]


def torch_step(path: str, b: dict[str, np.ndarray], repeats: int) -> float:
    import torch
    from transformers import Qwen3MoeForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = Qwen3MoeForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    ids = torch.from_numpy(b["tokens"]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad()
        logits = model(input_ids=ids).logits[:, :-1]
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    return median_time(step, repeats)[0]


def jax_decode(path: str, rows: int, prompt: int, new: int, repeats: int, kernel: str = "auto") -> float:
    from eigen_jax.model.hf import load_hf
    from eigen_jax.sampler import Sampler
    from rollout.engine import SamplingParams

    sampler = Sampler(load_hf(path).use_experts(kernel))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, ARCH["vocab_size"] - 1, prompt).tolist() for _ in range(rows)]
    sp = SamplingParams(temperature=0, max_new_tokens=new)
    sampler.generate_batch(prompts, sp)  # compiles
    return median_time(lambda: sampler.generate_batch(prompts, sp), repeats)[0]


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    kind, path, r = spec["kind"], spec["path"], spec["repeats"]
    if kind == "decode":
        seconds = jax_decode(path, spec["rows"], spec["prompt"], spec["new"], r, spec["kernel"])
    elif spec["engine"] == "torch":
        seconds = torch_step(path, dict(np.load(spec["batch"])), r)
    else:
        seconds = jax_step(path, dict(np.load(spec["batch"])), r, spec["kernel"])
    print("RESULT " + json.dumps({"seconds": seconds}), flush=True)


def run(spec: dict) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{spec}: worker failed\n{out.stderr[-3000:]}")
    line = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", default="8x256", help="learner step: rows x tokens")
    ap.add_argument("--decode", default="16x64+64", help="decode: rows x prompt + new tokens")
    ap.add_argument("--worker")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    n, length = map(int, args.batch.split("x"))
    rows, rest = args.decode.split("x")
    prompt, new = map(int, rest.split("+"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(Path(tmp))
        np.savez(Path(tmp) / "batch.npz", **batch(n, length))
        common = {"batch": str(Path(tmp) / "batch.npz"), "repeats": args.repeats, "kernel": "auto"}
        jax_runs = (
            ("eigen-jax MoE", "moe", "auto"),
            ("eigen-jax MoE, ragged_dot", "moe", "ragged_dot"),
            ("eigen-jax dense", "dense", "auto"),
        )
        step = {
            name: run({**common, "kind": "step", "engine": "jax", "path": paths[key], "kernel": kernel})
            for name, key, kernel in jax_runs
        }
        step["transformers MoE"] = run({**common, "kind": "step", "engine": "torch", "path": paths["moe"]})
        decode = {"kind": "decode", "rows": int(rows), "prompt": prompt, "new": new, "repeats": args.repeats}
        dec = {name: run({**decode, "path": paths[key], "kernel": kernel}) for name, key, kernel in jax_runs}
    tokens = n * length
    cmd = f"python tools/bench/moe.py --repeats {args.repeats} --batch {args.batch} --decode {args.decode}"
    model = (
        f"Qwen3-MoE, hidden {ARCH['hidden_size']}, {ARCH['num_hidden_layers']} layers, {MOE['num_experts']} "
        f"experts, top-{MOE['num_experts_per_tok']}, expert MLP {MOE['moe_intermediate_size']}, vocab "
        f"{ARCH['vocab_size']}, random init, fp32; the dense peer: the same model with one "
        f"{MOE['intermediate_size']}-unit MLP per layer (the same active matmul parameters)"
    )
    lines = [
        "## MoE: learner step and decode (`tools/bench/moe.py`)",
        "",
        f"Command: `{cmd}`. Machine: {machine()}. Model: {model}. Median of {args.repeats} after a "
        'warm-up, each engine in its own process. "eigen-jax MoE" is `model.moe_kernel: auto` (on '
        "CPU: `tiled`, the plain-JAX grouped matmul); the ragged_dot row is XLA's `lax.ragged_dot`, "
        "which XLA:CPU expands into every expert on every row.",
        "",
        f"| learner step ({n} x {length} tokens, SFT + AdamW) | s / step | tokens/s | speed vs MoE |",
        "|---|---:|---:|---:|",
    ]
    base = step["eigen-jax MoE"]
    for name, s in step.items():
        lines.append(f"| {name} | {s:.3f} | {tokens / s:,.0f} | {base / s:.2f}x |")
    head = f"decode ({rows} rows, prompt {prompt}, {new} new, greedy)"
    lines += ["", f"| {head} | s / batch | new tokens/s | speed vs MoE |", "|---|---:|---:|---:|"]
    base = dec["eigen-jax MoE"]
    for name, s in dec.items():
        lines.append(f"| {name} | {s:.3f} | {int(rows) * new / s:,.0f} | {base / s:.2f}x |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("moe", body)


if __name__ == "__main__":
    main()
