"""Config sections owned by ``rollout``: which domain, and how episodes run."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rollout.configio import Section


class DomainConfig(Section):
    name: str = "shop"
    """Registered domain name (``rollout.domains.available_domains()``); ``shop`` is built in."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from rollout.domains import available_domains  # domains import configs, not the reverse

        if name not in available_domains():
            raise ValueError(f"unknown domain; available: {', '.join(available_domains())}")
        return name


class EpisodeConfig(Section):
    max_steps: int = Field(50, ge=1)
    """Most agent messages per episode before it ends with ``max_steps`` (scores 0)."""
    concurrency: int = Field(32, ge=1)
    """Episodes run concurrently by asyncio."""
    user_patience: int = Field(3, ge=0)
    """Scripted user: unanswerable questions tolerated before it gives up."""
    prompt: Literal["full", "brief"] = "full"
    """What the agent is shown. ``full``: the domain's policy as the system prompt and its tool
    schemas (what real models need). ``brief``: a one-line system prompt and no tool list, for
    tiny models trained from scratch, which cannot read a policy and learn the rules and the
    tool-call format from the SFT dialogues instead (the quickstart: ~700-token dialogues instead
    of ~2.4k, which is most of its CPU time)."""
    turn_tokens: int = Field(256, ge=1)
    """LM parties: most tokens generated per turn (a longer turn is cut and closed)."""
    max_len: int = Field(4096, ge=16)
    """LM parties: longest transcript (prompt + generation) in tokens; a turn that does not fit
    ends the episode with ``context_overflow`` (reward 0)."""
    prefix_cache_mb: float = Field(512.0, ge=0)
    """Embedded engine (``eigen_jax.sampler``): host memory for the KV of served transcripts, so
    each turn prefills only its new tokens (``eigen_jax.prefix_cache``); 0 turns it off."""
    user: Literal["scripted", "model"] = "scripted"
    """Who plays the customer in LM episodes: the scripted simulator, or the user-simulator model
    (in ``eigen_jax.train``: the ``sft_user`` stage's export)."""
    user_temperature: float = Field(0.0, ge=0)
    """Sampling temperature of the user-simulator model (0: greedy, tau²'s default)."""
