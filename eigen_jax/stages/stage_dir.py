"""A stage's directory, ``{run.out_dir}/{stage}/``: checkpoints, metrics, the HF export, the done
marker. Plain files here (JAX is imported only to write checkpoints and exports), so the front
door can tell which stages are done without starting a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eigen_core.storage import upload
from eigen_core.tokenizer import Tokenizer
from eigen_jax.distributed import primary_first
from eigen_jax.train_config import CheckpointSection

if TYPE_CHECKING:
    from eigen_jax.checkpoint import Checkpointer
    from eigen_jax.learner import Learner


class StageDir:
    """``{out_dir}/{stage}/``: checkpoints, metrics, the final HF export and a done marker."""

    def __init__(self, out_dir: str | Path, stage: str):
        self.root = Path(out_dir) / stage
        self.hf = self.root / "hf"
        self.done = self.root / "done.json"

    def checkpointer(self, c: CheckpointSection) -> Checkpointer:
        """The stage's checkpoints: under ``checkpoint.dir`` when set, else in the stage dir."""
        from eigen_jax.checkpoint import Checkpointer

        where = f"{c.dir.rstrip('/')}/{self.root.name}" if c.dir else self.root / "checkpoints"
        return Checkpointer(where, keep=c.keep)

    def finish(
        self, learner: Learner, tok: Tokenizer, summary: dict[str, Any], export_to: str = ""
    ) -> dict[str, Any]:
        """The HF export (gathered by every process, written by process 0; copied to
        ``{export_to}/{stage}/hf`` too when given) and the done marker."""
        from eigen_jax.model.hf import save_hf

        tok_dir = self.root / "tokenizer"
        with primary_first(f"{self.root.name} tokenizer") as mine:
            if mine:
                tok.save(tok_dir)
        with primary_first(f"{self.root.name} export") as mine:
            save_hf(learner.model(), self.hf, tokenizer_dir=tok_dir)
            summary = {**summary, "hf_dir": str(self.hf)}
            if mine and export_to:
                copy = f"{export_to.rstrip('/')}/{self.root.name}/hf"
                upload(self.hf, copy)  # the export holds the tokenizer's files too
                summary["hf_copy"] = copy
            if mine:
                self.done.write_text(json.dumps(summary, indent=2))
        return summary

    def finished(self) -> dict[str, Any] | None:
        return json.loads(self.done.read_text()) if self.done.exists() else None
