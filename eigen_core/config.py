"""The config vocabulary every command shares: the run, the domain, a model endpoint, a server.

A key means the same thing wherever it appears: ``run.out_dir`` in ``eigen_jax.train`` and in
``eigen_jax.eval``; an ``EndpointSection`` for an eval party, a synth role, a rollout server's
engines and the learner's remote policy engine.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eigen_core.configio import Section


class RunSection(Section):
    """What every command's ``run`` section holds (``eigen_jax.train`` adds ``stages``)."""

    name: str = "run"
    """Run name, used in logs."""
    out_dir: str = "runs/default"
    """Where the run writes its outputs (summaries, metrics, checkpoints, eval records); a rerun
    resumes from what is there."""
    seed: int = 0
    """Master seed for everything the run does not seed explicitly."""
    progress: bool = True
    """Show progress bars (disable for log files)."""


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


class PoolConfig(Section):
    dir: str = "runs/pool"
    """Task pool directory (created if missing)."""
    shard_size: int = Field(256, ge=1)
    """Tasks per shard file."""


EndpointKind = Literal["endpoint", "checkpoint", "rules", "scripted"]


class EndpointSection(Section):
    """A model behind an OpenAI-compatible HTTP API and how to talk to it, or (``kind``) what
    stands in for one. The one section for every party that is a model: an eval's agent and user,
    each synth role, a rollout server's engines, the learner's remote policy engine. Each user of
    it accepts the kinds that make sense there and says so."""

    kind: EndpointKind = "endpoint"
    """``endpoint``: the server at ``url``. ``checkpoint``: an HF directory (``checkpoint``) that the
    command serves itself with the embedded engine (``eigen_jax.eval``). ``rules``: no model, a
    rule-based stand-in for the role (the scripted user simulator; in synth, also the oracle
    assistant and the failure-tagging judge). ``scripted``: ``synth.scripted``'s deterministic
    chat server, started in-process (synth tests and demos)."""
    url: str = "http://127.0.0.1:8000"
    """Base URL of the server (the ``/v1/...`` routes are appended)."""
    model: str = "policy"
    """The served model name (``--served-model-name``; for hosted APIs, the model id)."""
    tokenizer: str = ""
    """Directory with the model's ``tokenizer.json``: token-in/token-out parties (a rollout
    server's engines) need it; ``kind: checkpoint`` when it is not in the checkpoint directory."""
    checkpoint: str = ""
    """HF directory (config.json + safetensors + tokenizer) for ``kind: checkpoint``."""
    max_len: int | None = Field(None, ge=16)
    """``kind: checkpoint``: longest prompt + reply served (None: the model's context length)."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature of chat requests (tau² runs its user simulator at 0)."""
    max_tokens: int = Field(1024, ge=1)
    """Most tokens per chat reply."""
    structured_output: bool = False
    """Constrain JSON answers to their schema (OpenAI ``response_format`` with ``json_schema``;
    vLLM's structured outputs); synth's planner, synthesizer, judge and reflector. The endpoint
    must support it (``eigen_jax.serve`` refuses such requests)."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds per request before it is retried."""
    max_retries: int = Field(3, ge=0)
    """Retries per request (connection errors, timeouts, 5xx/429) with exponential backoff."""
    backoff_s: float = Field(0.5, ge=0)
    """First retry delay; doubles per retry, with jitter."""
    concurrency: int = Field(16, ge=1)
    """Most requests in flight to this endpoint (parties naming the same URL share it)."""
    rate_per_s: float | None = Field(None, gt=0)
    """Most requests started per second (hosted APIs; ``asyncio-throttle``); None: unlimited."""
    failure_budget: float = Field(0.5, gt=0, le=1)
    """Most share of failed requests (any fault, retried or not) among the last 100 before the run
    stops with an error naming this endpoint; 1 never stops."""
    api_key_env: str = ""
    """Environment variable holding an API key (sent as a bearer token); empty: none."""

    @model_validator(mode="after")
    def _needs(self) -> EndpointSection:
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ValueError("kind 'checkpoint' needs `checkpoint: <HF directory>`")
        return self

    def require_kind(self, where: str, *kinds: str) -> None:
        """Refuse a kind that ``where`` (the section's path) cannot use, naming those it can."""
        if self.kind not in kinds:
            raise ValueError(
                f"{where}.kind: {self.kind!r} is not possible here; use one of {', '.join(kinds)}"
            )

    def client_options(self, where: str = "api_key_env") -> dict[str, Any]:
        """``HTTPEngine`` keyword arguments: timeout, retries, backoff, concurrency, rate limit and
        the API key read from the environment (``where`` names the key in the error when the
        variable is unset)."""
        return dict(
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            concurrency=self.concurrency,
            rate_per_s=self.rate_per_s,
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
    idle_timeout_s: float = Field(60.0, gt=0)
    """Seconds a connection may stay open without sending a complete request's headers (idle
    between requests, or a client sending them slowly): then it is closed. Keep it above the
    clients' own keep-alive (aiohttp's: 15 s) so they never reuse a connection being closed."""
    read_timeout_s: float = Field(60.0, gt=0)
    """Seconds a request's body may take to arrive after its headers; later: 408, connection
    closed. How long the answer takes (an episode may run for minutes) is not limited."""
    max_inflight: int = Field(1024, ge=1)
    """Requests read or handled at once (``/health`` aside); one more is answered 429 with
    ``Retry-After`` and the clients retry. Keep it above the clients' concurrency (a rollout
    client's episodes in flight, an engine client's connection pool)."""
