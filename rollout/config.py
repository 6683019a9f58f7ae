"""Config owned by ``rollout``: how episodes run, and what a learner and its rollout servers must
agree on. The vocabulary every command shares (run, domain, endpoints, servers) is
``eigen_core.config``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from eigen_core.configio import Section


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

    SPEED_ONLY: ClassVar[frozenset[str]] = frozenset({"concurrency", "prefix_cache_mb"})
    """Keys that change only how fast episodes run, not what they are."""

    def decisive(self) -> dict[str, Any]:
        """Every setting that decides what an episode is (all but ``SPEED_ONLY``): what eval
        records are keyed by, and what a learner and its rollout servers must agree on."""
        return self.model_dump(mode="json", exclude=set(self.SPEED_ONLY))


def episode_settings(domain: str, episode: EpisodeConfig) -> dict[str, Any]:
    """What decides a run's episodes: the domain and ``episode.decisive()``. A rollout server
    reports it on ``/health``; its learner refuses one whose settings differ from its own."""
    return {"domain": domain, "episode": episode.decisive()}
