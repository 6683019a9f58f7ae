"""Config sections owned by ``rollout``: which domain, and how episodes run."""

from __future__ import annotations

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
