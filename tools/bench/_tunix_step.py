"""google-tunix peer for tools/bench/train_step.py; runs in tunix's own virtual environment
(tunix 0.1.7 pins safetensors<0.8, which the project's transformers cannot take).

    /tmp/tunixenv/bin/python tools/bench/_tunix_step.py SPEC.json

SPEC gives the model dimensions, a batch file (.npz, as for _trl_step.py) and the repeat count.
One step = tunix's own loss (``algo_core.grpo_loss_fn`` with token-mean aggregation, eps 0.4/0.4,
beta 0; ``peft_trainer._default_loss_fn`` for SFT on the completion tokens) under
``nnx.value_and_grad`` + optax AdamW with clipping 1.0, jitted, fp32, on tunix's Qwen3 (random
init: the timing does not depend on the weights). Prints ``RESULT {"grpo": s, "sft": s}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tunix.models.qwen3.model import ModelConfig, Qwen3
from tunix.rl import algo_core, common
from tunix.rl.grpo.grpo_learner import GRPOConfig
from tunix.sft import peft_trainer
from tunix.sft.utils import build_positions_from_mask, make_causal_attn_mask


def median_step(step, repeats: int) -> float:
    step()  # warm-up (compiles)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def build(spec: dict) -> tuple[Qwen3, nnx.Optimizer]:
    d = spec["dims"]
    cfg = ModelConfig(
        num_layers=d["num_hidden_layers"],
        vocab_size=d["vocab_size"],
        embed_dim=d["hidden_size"],
        hidden_dim=d["intermediate_size"],
        num_heads=d["num_attention_heads"],
        head_dim=d["head_dim"],
        num_kv_heads=d["num_key_value_heads"],
        rope_theta=1_000_000,
        norm_eps=1e-6,
        use_tied_embedding=True,
    )
    model = Qwen3(cfg, rngs=nnx.Rngs(0))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    b = {k: jnp.asarray(v) for k, v in np.load(spec["batch"]).items()}
    result = {}

    model, opt = build(spec)
    algo = GRPOConfig(num_generations=2, beta=0.0, epsilon=0.4, loss_agg_mode="token-mean")
    algo.epsilon_high = 0.4
    algo.temperature = 1.0
    example = common.TrainExample(
        prompt_ids=b["prompt_ids"],
        prompt_mask=b["prompt_mask"],
        completion_ids=b["completion_ids"],
        completion_mask=b["completion_mask"],
        advantages=b["advantages"],
        ref_per_token_logps=None,
        old_per_token_logps=b["old_logp"],
    )

    @nnx.jit
    def grpo_step(model, opt, example):
        def loss(m):
            return algo_core.grpo_loss_fn(m, example, algo, pad_id=0, eos_id=1)[0]

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    result["grpo"] = median_step(lambda: grpo_step(model, opt, example).block_until_ready(), spec["repeats"])
    print("grpo", result["grpo"], flush=True)

    model, opt = build(spec)
    tokens = jnp.concatenate([b["prompt_ids"], b["completion_ids"]], 1)
    attn = jnp.concatenate([b["prompt_mask"], b["completion_mask"]], 1)
    loss_mask = jnp.concatenate([jnp.zeros_like(b["prompt_mask"]), b["completion_mask"]], 1)
    positions, causal = build_positions_from_mask(attn), make_causal_attn_mask(attn)

    @nnx.jit
    def sft_step(model, opt):
        def loss(m):
            return peft_trainer._default_loss_fn(m, tokens, loss_mask, positions, causal)

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    result["sft"] = median_step(lambda: sft_step(model, opt).block_until_ready(), spec["repeats"])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
