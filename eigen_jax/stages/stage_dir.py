"""A stage's directory, ``{run.out_dir}/{stage}/``: checkpoints, metrics, the HF export, the done
marker. Plain files here (JAX is imported only to write checkpoints and exports), so the front
door can tell which stages are done without starting a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eigen_core.tokenizer import Tokenizer
from eigen_jax.distributed import primary_first

if TYPE_CHECKING:
    from eigen_jax.checkpoint import Checkpointer
    from eigen_jax.learner import Learner


class StageDir:
    """``{out_dir}/{stage}/``: checkpoints, metrics, the final HF export and a done marker."""

    def __init__(self, out_dir: str | Path, stage: str):
        self.root = Path(out_dir) / stage
        self.hf = self.root / "hf"
        self.done = self.root / "done.json"

    def checkpointer(self, keep: int) -> Checkpointer:
        from eigen_jax.checkpoint import Checkpointer

        return Checkpointer(self.root / "checkpoints", keep=keep)

    def finish(self, learner: Learner, tok: Tokenizer, summary: dict[str, Any]) -> dict[str, Any]:
        """The HF export (gathered by every process, written by process 0) and the done marker."""
        from eigen_jax.model.hf import save_hf

        tok_dir = self.root / "tokenizer"
        with primary_first(f"{self.root.name} tokenizer") as mine:
            if mine:
                tok.save(tok_dir)
        with primary_first(f"{self.root.name} export") as mine:
            save_hf(learner.model(), self.hf, tokenizer_dir=tok_dir)
            summary = {**summary, "hf_dir": str(self.hf)}
            if mine:
                self.done.write_text(json.dumps(summary, indent=2))
        return summary

    def finished(self) -> dict[str, Any] | None:
        return json.loads(self.done.read_text()) if self.done.exists() else None
