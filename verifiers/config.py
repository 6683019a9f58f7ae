"""Config section owned by ``verifiers``: reward components and the checker sandbox."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eigen_core.configio import Section


class VerifierConfig(Section):
    components: list[Literal["db", "outputs", "checker"]] = Field(
        default_factory=lambda: ["db", "outputs", "checker"]
    )
    """What a reward of 1 requires: DB hash equal to the gold replay's, required outputs said,
    the task's checker passing."""
    checker_timeout_s: float = Field(5.0, gt=0)
    """Wall-clock and CPU-time limit per checker run."""
    checker_memory_mb: int = Field(512, ge=64)
    """Address-space limit per checker run."""
    sandbox_workers: int = Field(2, ge=1)
    """Warm sandbox processes (checks run concurrently up to this many)."""
    allow_weak_sandbox: bool = False
    """Where the sandbox's kernel layer (namespaces, unprivileged uid, seccomp) cannot be applied,
    run checkers under Python-level checks only instead of refusing to start. Generated checkers
    are untrusted code: leave this off unless every checker is your own. Reports say when it ran."""
