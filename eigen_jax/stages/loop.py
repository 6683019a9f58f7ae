"""The one stage loop: every learner stage (pretrain, SFT of agent and user, GRPO on the toy task
and on episodes) runs here.

A stage supplies a ``StageProgram``: one optimiser step (its batches through its loss, by the
``Learner``), its data position for checkpoints, its held-out evaluation and its summary. The
loop owns the rest, the same for every stage: resume from the latest checkpoint, steps until
``steps``, evaluation every ``eval_every``, metrics (JSONL + TensorBoard + a progress line),
a checkpoint every ``checkpoint.every`` and at the end, then the HF export and the done marker.
Asynchronous stages (GRPO on episodes) give an ``async`` step and a ``session`` that starts and
stops their rollouts; synchronous ones run in the same loop with no other task beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from eigen_core.tokenizer import Tokenizer
from eigen_jax.checkpoint import Checkpointer
from eigen_jax.distributed import is_primary
from eigen_jax.learner import Learner
from eigen_jax.metrics import MetricsLogger
from eigen_jax.stages.stage_dir import StageDir
from eigen_jax.train_config import CheckpointSection

Metrics = dict[str, Any]


class StageProgram(Protocol):
    """What one stage supplies to the loop (subclass it to inherit the no-op defaults)."""

    learner: Learner

    def step(self) -> Metrics | Awaitable[Metrics]:
        """One optimiser step (or a skipped one: ``learner.skip()``); its metrics."""
        ...

    def evaluate(self) -> Metrics | Awaitable[Metrics]:
        """Held-out metrics, every ``eval_every`` steps and at the last (an asynchronous stage's
        may be awaitable)."""
        return {}

    def data_state(self) -> dict[str, Any]:
        """JSON-able position of the stage's data, saved with each checkpoint."""
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        """Continue from a checkpoint: ``learner.state`` is already restored; ``data`` is what
        ``data_state`` returned when it was saved."""

    def session(self) -> contextlib.AbstractAsyncContextManager[None]:
        """What runs around the steps (an asynchronous stage's rollouts); by default nothing."""
        return contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        """The stage's own entries of its ``done.json``."""
        return {}


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    """Optimiser steps of the stage."""
    log_every: int
    """Steps between console progress lines (every step goes to the JSONL)."""
    checkpoint: CheckpointSection
    """How often to save (and one at the last step) and how many to keep."""
    eval_every: int | None = None
    """Steps between ``evaluate`` calls (and one at the last step); None: never."""
    eval_first: bool = False
    """Also evaluate before the first step of a fresh run (logged as step 0: where a learning
    curve starts)."""


def _due(step: int, every: int | None, last: int) -> bool:
    return every is not None and (step % every == 0 or step == last)


async def _metrics(row: Metrics | Awaitable[Metrics]) -> Metrics:
    return await row if inspect.isawaitable(row) else row


async def _steps(program: StageProgram, ls: LoopSettings, log: MetricsLogger, ckpt: Checkpointer) -> None:
    learner = program.learner
    async with program.session():
        if ls.eval_first and ls.eval_every is not None and learner.step == 0:
            log.log(0, await _metrics(program.evaluate()))
        while learner.step < ls.steps:
            row = await _metrics(program.step())
            step = learner.step
            if _due(step, ls.eval_every, ls.steps):
                row = {**row, **await _metrics(program.evaluate())}
            log.log(step, row)
            if _due(step, ls.checkpoint.every, ls.steps):
                ckpt.save(learner.state, {"data": program.data_state()})


def run_stage(
    program: StageProgram, sd: StageDir, tok: Tokenizer, ls: LoopSettings, *, resume: bool = False
) -> dict[str, Any]:
    """Run ``program`` to ``ls.steps`` (from its latest checkpoint when ``resume``), export the
    model and mark the stage done; returns the stage summary."""
    learner = program.learner
    ckpt = sd.checkpointer(ls.checkpoint)
    start = ckpt.latest_step() if resume else None
    if start is not None:
        learner.state, meta = ckpt.restore(learner.state)
        program.restore(meta.get("data", {}))
    log = MetricsLogger(
        sd.root, sd.root.name, ls.steps, log_every=ls.log_every, resume_step=start, enabled=is_primary()
    )
    try:
        asyncio.run(_steps(program, ls, log, ckpt))
    finally:
        log.close()
        ckpt.close()
    summary = {"steps": ls.steps, **program.summary()}
    return sd.finish(learner, tok, summary, export_to=ls.checkpoint.export_to)
