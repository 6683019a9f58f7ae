"""The ``InferenceEngine`` interface: token ids in, token ids + logprobs + policy version out.

Implementations: the in-process JAX sampler (``eigen_jax.sampler.Sampler``) and HTTP clients for
OpenAI-compatible servers (vLLM, ``eigen_jax.serve``).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import Field

from eigen_core.contracts import Contract
from eigen_core.routes import ExpertRoutes, RouteLayout


class ContextOverflow(ValueError):
    """A request longer than the engine serves; episodes end with ``context_overflow``."""


class EngineError(RuntimeError):
    """A request that failed for good (after retries, or a 4xx the server explained). Not an
    outcome of the episode: ``rollout.episode.run_episode`` lets it through, so the caller reruns
    the episode (``transient``) or stops, and never scores an engine's failure as the policy's.

    ``transient``: the endpoint kept failing (retries spent), so the same request may succeed
    later; false for an answer that says the request itself is wrong."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class SamplingParams(Contract):
    """How to sample one completion."""

    temperature: float = Field(1.0, ge=0.0)
    """0 is greedy. Returned logprobs are those of softmax(logits / temperature) (1 when greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1 = off)."""
    top_k: int = Field(0, ge=0)
    """Sample among the k most likely tokens (0 = off)."""
    max_new_tokens: int = Field(256, ge=1)
    stop_token_ids: list[int] = Field(default_factory=list)
    """Generation ends after emitting any of these (the stop token is included in the output)."""
    seed: int | None = None
    """Per-request seed; None draws from the engine's own stream."""
    routes: RouteLayout | None = None
    """MoE policies (``grpo.routing_replay``): return the experts of every token with the
    completion (``Generation.routes``); an HTTP engine reads them, in this layout, from the
    server's ``routed_experts`` (vLLM's ``--enable-return-routed-experts``). The embedded sampler
    records them when built with ``record_routes``."""
    routes_start: int = Field(0, ge=0)
    """With ``routes``: the caller already holds the routes of the prompt's first this many
    tokens (earlier turns), so the engine may leave them out of its answer (vLLM's
    ``routed_experts_prompt_start``: multi-turn episodes then fetch each token's routes once)."""


class Generation(Contract):
    """One completion."""

    tokens: list[int]
    logprobs: list[float]
    """Behaviour logprob of each generated token (see ``SamplingParams.temperature``)."""
    finish_reason: Literal["stop", "length"]
    version: int
    """Policy version of the weights that generated every token of this completion."""
    routes: ExpertRoutes | None = None
    """MoE engines that record routes: the experts of the last ``routes.tokens`` tokens of
    prompt + completion (rows of tokens the engine has no routes for are unknown)."""


@runtime_checkable
class InferenceEngine(Protocol):
    @property
    def version(self) -> int:
        """Version of the weights new requests are served with."""
        ...

    async def generate(self, prompt_tokens: list[int], sampling: SamplingParams) -> Generation:
        """Complete ``prompt_tokens``; concurrent calls may be batched by the engine."""
        ...
