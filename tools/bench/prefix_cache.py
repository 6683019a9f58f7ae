"""Multi-turn serving with and without the embedded sampler's prefix cache.

    python tools/bench/prefix_cache.py [--conversations 64] [--turns 8] [--continuation 48]
                                       [--new 32] [--repeats 3]

The workload is what an episode sends the engine: ``--conversations`` transcripts served as one
batch per turn; every turn appends ``--continuation`` tokens (a tool result or user message) to
the transcript and samples ``--new`` tokens (no stop token, so every turn generates exactly that
many). The model is the quickstart's architecture with random weights. Both engines serve the
same seeded requests; the run reports how often both sample the same tokens. Figures: median wall time of
the whole workload over ``--repeats`` runs after a warm-up run that compiles every shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

import jax.numpy as jnp
import numpy as np
from _report import machine, median_time, write_section
from flax import nnx
from sampler import _quickstart_arch

from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.sampler import Sampler
from rollout.engine import SamplingParams


def workload(sampler: Sampler, args: argparse.Namespace) -> list[list[int]]:
    """Serve every turn of every conversation; returns all sampled tokens (turn-major)."""
    rng = np.random.default_rng(0)
    vocab = sampler.cfg.vocab_size
    transcripts = [
        rng.integers(1, vocab, args.system + args.continuation).tolist() for _ in range(args.conversations)
    ]
    out: list[list[int]] = []
    for turn in range(args.turns):
        sp = [
            SamplingParams(temperature=1.0, max_new_tokens=args.new, seed=1000 * turn + i)
            for i in range(args.conversations)
        ]
        gens = sampler.generate_batch(transcripts, sp)
        out += [g.tokens for g in gens]
        transcripts = [
            t + g.tokens + rng.integers(1, vocab, args.continuation).tolist()
            for t, g in zip(transcripts, gens, strict=True)
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument(
        "--system", type=int, default=96, help="tokens of the opening prompt before the first continuation"
    )
    ap.add_argument("--continuation", type=int, default=48)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    arch = _quickstart_arch()
    model = Decoder(
        DecoderConfig.from_hf(
            {
                **arch,
                "model_type": "qwen3",
                "tie_word_embeddings": True,
                "vocab_size": -(-arch["vocab_size"] // 64) * 64,
            }
        ),
        rngs=nnx.Rngs(0),
        dtype=jnp.float32,
    )
    final_len = args.system + args.turns * (args.continuation + args.new)
    rows = []
    tokens = {}
    for name, mb in (("off", 0.0), ("on", 1024.0)):

        def make(mb: float = mb) -> Sampler:
            return Sampler(
                model, pad_id=0, min_batch_bucket=8, max_len=final_len + args.new, prefix_cache_mb=mb
            )

        tokens[name] = workload(make(), args)  # warm-up: compiles every shape
        t, samples = median_time(lambda make=make: workload(make(), args), args.repeats)
        probe = make()
        workload(probe, args)
        hit = probe.prefix_cache.hit_rate if probe.prefix_cache is not None else 0.0
        rows.append((name, t, samples, hit))
        rate = args.conversations * args.turns / t
        print(
            f"prefix cache {name}: {t:.2f} s ({rate:.1f} turns/s), prompt tokens from cache {hit:.0%}",
            flush=True,
        )
    same = np.mean([a == b for a, b in zip(tokens["off"], tokens["on"], strict=True)])
    base = rows[0][1]
    table = "\n".join(
        f"| {name} | {t:.2f} | {args.conversations * args.turns / t:.1f} | {base / t:.2f}× | {hit:.0%} |"
        for name, t, _, hit in rows
    )
    samples = "; ".join(f"{name}: {[round(s, 2) for s in ss]}" for name, _, ss, _ in rows)
    body = f"""## Embedded sampler: prefix cache on multi-turn transcripts

`python tools/bench/prefix_cache.py` — {machine()}.
The quickstart's architecture (random weights, fp32); {args.conversations} transcripts served
as one batch per turn for {args.turns} turns; each turn appends {args.continuation} tokens and
samples {args.new} (transcripts grow from {args.system + args.continuation} to ~{final_len}
tokens). Median of {args.repeats} runs after a compiling warm-up. Turns whose sampled tokens are
identical with the cache on and off: {same:.1%} (fp32 logits agree to ~1e-6, so a sample can
flip only where two tokens' cumulative probabilities tie that closely).

| prefix cache | s / workload | turns / s | speed-up | prompt tokens from cache |
|---|---:|---:|---:|---:|
{table}

Samples (s): {samples}.
"""
    print(body)
    if not args.no_write:
        write_section("prefix_cache", body)


if __name__ == "__main__":
    main()
