"""Config sections owned by ``rollout``: which domain, and how episodes run."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from eigen_core.configio import Section


class DomainConfig(Section):
    name: str = "shop"
    """Registered domain name (``eigen_core.domains.available_domains()``); ``shop`` is built in."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from eigen_core.domains import available_domains  # domains import configs, not the reverse

        if name not in available_domains():
            raise ValueError(f"unknown domain; available: {', '.join(available_domains())}")
        return name


class HTTPEndpointSection(Section):
    """An OpenAI-compatible server and the limits of talking to it (``rollout.http_engine``)."""

    url: str = "http://127.0.0.1:8000"
    """Base URL of the server (the ``/v1/...`` routes are appended)."""
    model: str = "policy"
    """The served model name (``--served-model-name``; for hosted APIs, the model id)."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds per request before it is retried."""
    max_retries: int = Field(3, ge=0)
    """Retries per request (connection errors, timeouts, 5xx/429) with exponential backoff."""
    concurrency: int = Field(16, ge=1)
    """Most requests in flight to this endpoint."""
    api_key_env: str = ""
    """Environment variable holding an API key (sent as a bearer token); empty: none."""
    failure_budget: float = Field(0.5, gt=0, le=1)
    """Most share of failed requests (any fault, retried or not) among the last 100 before the run
    stops with an error naming this endpoint; 1 never stops."""

    def client_options(self, where: str = "api_key_env") -> dict[str, Any]:
        """``HTTPEngine`` keyword arguments: timeout, retries, concurrency and the API key read
        from the environment (``where`` names the key in the error when the variable is unset)."""
        return dict(
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            concurrency=self.concurrency,
            api_key=env_secret(self.api_key_env, where),
            failure_budget=self.failure_budget,
        )


def env_secret(var: str, where: str) -> str | None:
    """The value of environment variable ``var`` (None when ``var`` is empty); an unset variable
    that a config names is an error naming ``where``."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ValueError(f"{where}: environment variable {var} is not set")
    return value


class ChatEndpointSection(HTTPEndpointSection):
    """An OpenAI-compatible chat endpoint and how to talk to it (shared by eval parties and synth
    roles)."""

    temperature: float = Field(0.0, ge=0)
    """Sampling temperature (tau² runs its user simulator at 0)."""
    max_tokens: int = Field(1024, ge=1)
    """Most tokens per reply."""
    rate_per_s: float | None = Field(None, gt=0)
    """Most requests started per second (hosted APIs; ``asyncio-throttle``); None: unlimited."""

    def client_options(self, where: str = "api_key_env") -> dict[str, Any]:
        """As the base's, plus the rate limit."""
        return {**super().client_options(where), "rate_per_s": self.rate_per_s}


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


class ServerSection(Section):
    """Where a server listens (``eigen_jax.serve``, ``eigen_apps.rollout_server``)."""

    host: str = "127.0.0.1"
    """Interface to listen on. Any but a loopback address needs an API key (``api_key_env``)."""
    api_key_env: str = ""
    """Environment variable holding the bearer token every request but /health must send;
    empty: ``$EIGEN_API_KEY`` if set, else none (allowed on loopback only)."""
    port: int = Field(8000, ge=1, le=65535)
    """Port to listen on."""
    progress_every: float = Field(10.0, gt=0)
    """Seconds between progress lines."""
