"""Orbax checkpoints of a ``TrainState`` plus JSON metadata (data iterator, controller, stage).

The state is saved as a flat ``{tree path: array}`` dict, which orbax stores without knowing
nnx or optax types; restoring flattens the live state the same way for shapes, dtypes and
shardings, so a checkpoint comes back onto whatever mesh the resumed run uses. Orbax writes
each step to a temporary directory and renames it when complete: a run killed mid-save leaves
the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from eigen_core.crashpoints import crash_point
from eigen_jax.learner import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written (names the directory, the cause, the last good step)."""


def _causes(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _flat(state: TrainState) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}, treedef


def _path(directory: str | Path) -> Any:
    """A local path (absolute) or a URL as orbax's own path type (``gs://``: etils + gcsfs)."""
    if "://" in str(directory):
        from etils import epath

        return epath.Path(str(directory))
    return Path(directory).absolute()


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints of one stage under ``directory``."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = _path(directory)
        try:
            self._mngr = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            )
        except ImportError as e:  # etils reaches buckets through gcsfs (and s3fs)
            raise CheckpointError(
                f"checkpoints under {directory}: this storage needs a package not installed "
                f"({e}); for gs:// install the gcs extra (pip install 'eigen-jax[gcs]')"
            ) from e

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def _complete_steps(self) -> list[int]:
        """Steps whose directory orbax committed (no temporary suffix), from disk."""
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Save at ``state.step`` (blocks until written: a resume must never see half a step).

        Raises ``CheckpointError`` naming the directory when the step cannot be written (disk
        full, read-only); the previous checkpoints stay as they were."""
        flat, _ = _flat(state)
        step = int(state.step)
        try:
            self._mngr.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)),
            )
            crash_point("checkpoint.saving")  # orbax may still be writing: the step is not committed
            self._mngr.wait_until_finished()
        except Exception as e:
            # orbax wraps the OSError in its own errors; say what it means and where
            cause = next((c for c in _causes(e) if isinstance(c, OSError)), e)
            raise CheckpointError(
                f"cannot write the checkpoint of step {step} under {self.directory} "
                f"({getattr(cause, 'strerror', None) or cause}); the latest complete checkpoint is "
                f"step {self._complete_steps()[-1] if self._complete_steps() else None}"
            ) from e

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The checkpoint at ``step`` (default: latest), shaped and sharded like ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        flat, treedef = _flat(like)
        target = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
            for k, v in flat.items()
        }
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        restored = out["state"]
        if set(restored) != set(flat):
            raise ValueError(f"{self.directory}/{step}: checkpoint does not match this model's state")
        return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in flat]), dict(out["meta"])

    def close(self) -> None:
        self._mngr.close()
