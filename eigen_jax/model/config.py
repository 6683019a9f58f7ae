"""Decoder hyper-parameters, read from (and written back to) an HF ``config.json``.

One config covers the Qwen3, Qwen3-MoE and Llama/Qwen2 families: they differ in q/k norms
(Qwen3), q/k/v biases (Qwen2, optional in Llama), head_dim (free in Qwen3), RoPE scaling, and
(Qwen3-MoE) sparse expert layers in place of some or all MLPs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["qwen3", "qwen3_moe", "llama", "qwen2"]
_MODEL_TYPES: dict[str, Family] = {
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3_moe",
    "llama": "llama",
    "qwen2": "qwen2",
}
_ARCHITECTURES: dict[Family, str] = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_ROPE_TYPES = ("default", "linear", "llama3")


class DecoderConfig(BaseModel):
    """Architecture of a decoder-only transformer (HF field names where they exist)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    family: Family
    """Which HF architecture this is (``model_type`` in config.json)."""
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling parameters (``rope_type`` linear or llama3); None for plain RoPE."""
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    """Bias on the q/k/v projections (always in Qwen2, ``attention_bias`` in Llama/Qwen3)."""
    o_bias: bool = False
    """Bias on the output projection (Llama's ``attention_bias`` also sets it)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """RMSNorm on each head's queries and keys before RoPE (Qwen3)."""
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    num_experts: int = Field(0, ge=0)
    """Experts per MoE layer (Qwen3-MoE; 0: a dense model)."""
    num_experts_per_tok: int = Field(0, ge=0)
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int = Field(0, ge=0)
    """Hidden size of each expert's MLP."""
    norm_topk_prob: bool = False
    """Renormalise the top-k gate weights to sum to 1 (true in Qwen3-30B-A3B / 235B-A22B)."""
    decoder_sparse_step: int = Field(1, ge=1)
    """Every this many layers is an MoE layer (layer i when (i + 1) % step == 0)."""
    mlp_only_layers: tuple[int, ...] = ()
    """Layers that keep a dense MLP although the step would make them sparse."""
    router_aux_loss_coef: float = Field(0.0, ge=0)
    """Weight of the load-balancing loss (HF's ``router_aux_loss_coef``); added to the training
    loss when the config also sets ``output_router_logits`` (as transformers does), else 0."""

    @model_validator(mode="after")
    def _moe_fields(self) -> DecoderConfig:
        if self.family != "qwen3_moe":
            if self.num_experts:
                raise ValueError(f"num_experts is a qwen3_moe field (model_type is {self.family})")
            return self
        if self.num_experts < 1:
            raise ValueError("a qwen3_moe config needs num_experts >= 1")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..num_experts "
                f"({self.num_experts})"
            )
        if self.moe_intermediate_size < 1:
            raise ValueError("a qwen3_moe config needs moe_intermediate_size >= 1")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"mlp_only_layers {bad}: no such layer (num_hidden_layers {self.num_hidden_layers})"
            )
        return self

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer ``i`` is sparse (HF's rule for Qwen3-MoE)."""
        return (
            self.num_experts > 0 and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0
        )

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the sparse layers, in order (what recorded routes are indexed by)."""
        return tuple(i for i in range(self.num_hidden_layers) if self.is_moe_layer(i))

    def __hash__(self) -> int:  # the config is static jit metadata; rope_scaling is a dict
        return hash(self.model_dump_json())

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> DecoderConfig:
        """From a parsed HF ``config.json`` (transformers 4.x or 5.x layouts)."""
        model_type = hf.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"config.json: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(_MODEL_TYPES)})"
            )
        family = _MODEL_TYPES[model_type]
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        if hf.get("use_sliding_window"):
            raise ValueError("config.json: use_sliding_window=true is not supported")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise ValueError(
                f"config.json: rope_type {rope_type!r} is not supported (supported: {_ROPE_TYPES})"
            )
        heads = hf["num_attention_heads"]
        attn_bias = bool(hf.get("attention_bias", False))
        return cls(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=True if family == "qwen2" else attn_bias,
            o_bias=attn_bias if family != "qwen2" else False,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=family in ("qwen3", "qwen3_moe"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            **(_moe_from_hf(hf) if family == "qwen3_moe" else {}),
        )

    def to_hf(self) -> dict[str, Any]:
        """An HF ``config.json`` that transformers and vLLM load as this architecture."""
        rope = {"rope_theta": self.rope_theta, "rope_type": "default", **(self.rope_scaling or {})}
        out: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,  # transformers 4.x / vLLM read these two
            "rope_scaling": None if self.rope_scaling is None else rope,
            "rope_parameters": rope,  # transformers 5.x reads this
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.family != "qwen2":
            out["attention_bias"] = self.qkv_bias
        if self.family == "llama":
            out["mlp_bias"] = self.mlp_bias
        if self.family == "qwen3_moe":
            out.update(
                num_experts=self.num_experts,  # the released configs' name (vLLM, transformers 4.x/5.x)
                num_experts_per_tok=self.num_experts_per_tok,
                moe_intermediate_size=self.moe_intermediate_size,
                norm_topk_prob=self.norm_topk_prob,
                decoder_sparse_step=self.decoder_sparse_step,
                mlp_only_layers=list(self.mlp_only_layers),
                router_aux_loss_coef=self.router_aux_loss_coef,
                output_router_logits=self.router_aux_loss_coef > 0,
            )
        return out


def _moe_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """The MoE fields of a Qwen3-MoE ``config.json`` (transformers 5 writes ``num_local_experts``)."""
    experts = hf.get("num_experts")
    experts = hf.get("num_local_experts") if experts is None else experts
    if experts is None:
        raise ValueError("config.json: a qwen3_moe config needs num_experts")
    if hf.get("shared_expert_intermediate_size"):
        raise ValueError("config.json: shared experts are not supported (Qwen3-MoE has none)")
    coef = float(hf.get("router_aux_loss_coef", 0.001)) if hf.get("output_router_logits") else 0.0
    return dict(
        num_experts=experts,
        num_experts_per_tok=hf.get("num_experts_per_tok", 8),
        moe_intermediate_size=hf["moe_intermediate_size"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        decoder_sparse_step=hf.get("decoder_sparse_step", 1),
        mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
        router_aux_loss_coef=coef,
    )
