"""Tiny random HF models written with transformers (torch CPU), for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attn_implementation="eager",
)

VARIANTS = {
    "qwen3-tied": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=32, tie_word_embeddings=True)),
    "qwen3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    ),
    "llama3": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            max_position_embeddings=1024,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500000.0,
            },
        ),
    ),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    # every layer sparse but one dense (mlp_only_layers), top-2 of 8, renormalised gate weights
    "qwen3-moe": (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(
            head_dim=16,
            num_hidden_layers=3,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            mlp_only_layers=[1],
        ),
    ),
    # every second layer sparse, top-3 of 4, raw softmax weights, tied embeddings
    "qwen3-moe-step2": (
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
        dict(
            head_dim=16,
            num_hidden_layers=4,
            num_experts=4,
            num_experts_per_tok=3,
            moe_intermediate_size=24,
            norm_topk_prob=False,
            decoder_sparse_step=2,
            tie_word_embeddings=True,
        ),
    ),
}


def write_tiny(name: str, root: Path, seed: int = 0):
    """Create, save and return (HF model, its directory) for variant ``name``."""
    cfg_cls, model_cls, extra = VARIANTS[name]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**_COMMON, **extra})).eval()
    with torch.no_grad():  # random biases/norms, so that a mix-up of them cannot go unnoticed
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n or n.endswith("mlp.gate.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    path = root / name
    model.save_pretrained(path)
    return model, path
