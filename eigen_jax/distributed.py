"""Multi-controller JAX: one learner process per host, one program, one global mesh.

``initialize`` runs before anything touches a device. Every process then builds the same mesh
over all processes' devices, computes the same global batches (data are a pure function of the
seed and step) and places only its addressable shards of each (``jax.device_put`` of a host array
onto a global sharding slices it locally); jitted steps, orbax checkpoints and the HF export's
gather are collectives every process joins. Files that are the run's, not a shard's (config,
summaries, metrics, TensorBoard, the HF export, done markers, the task pool) are written by
process 0 alone, and the others wait for it at a barrier (``primary_first``).

A process that dies makes the others fail within ``distributed.heartbeat_timeout_s``: JAX's
coordination service notices the missing heartbeats and ends every task with an error naming the
lost one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, model_validator

from eigen_core.configio import Section

LAUNCHER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
"""Variables by which a launcher (SLURM, Open MPI, a multi-host TPU VM slice) says there are
several processes; JAX's own cluster detection reads them and fills in the rest."""


class DistributedSection(Section):
    """How this learner process joins the others (``jax.distributed``)."""

    mode: Literal["auto", "on", "off"] = "auto"
    """``auto``: join when ``coordinator_address`` is set or a launcher says there are several
    processes (SLURM with more than one task, Open MPI, a TPU VM slice of several hosts), else
    run as the only process. ``on``: always call ``jax.distributed.initialize`` (JAX detects what
    is not given). ``off``: one process, whatever the environment says."""
    coordinator_address: str = ""
    """``host:port`` of process 0's coordination service (every process gives the same); empty:
    detected (TPU VM, SLURM, Open MPI) or single-process."""
    num_processes: int | None = Field(None, ge=1)
    """How many processes take part (None: detected)."""
    process_id: int | None = Field(None, ge=0)
    """This process's index, 0 .. num_processes - 1 (None: detected)."""
    initialization_timeout_s: int = Field(300, ge=1)
    """How long process 0 waits for the others to connect before failing."""
    heartbeat_timeout_s: int = Field(100, ge=1)
    """A process not heard from for this long is declared dead and every other process stops with
    an error naming it."""

    @model_validator(mode="after")
    def _complete(self) -> DistributedSection:
        explicit = [self.num_processes is not None, self.process_id is not None]
        if any(explicit) and not self.coordinator_address:
            raise ValueError("num_processes / process_id need coordinator_address (host:port of process 0)")
        if self.num_processes is not None and self.process_id is not None:
            if self.process_id >= self.num_processes:
                raise ValueError(
                    f"process_id {self.process_id} is not below num_processes {self.num_processes}"
                )
        return self

    def wanted(self, environ: dict[str, str] | None = None) -> bool:
        """Whether this process should call ``jax.distributed.initialize``."""
        env = os.environ if environ is None else environ
        if self.mode != "auto":
            return self.mode == "on"
        if self.coordinator_address:
            return True
        several = {"SLURM_NTASKS": 1, "OMPI_COMM_WORLD_SIZE": 1}
        if any(int(env.get(k, "1") or 1) > v for k, v in several.items()):
            return True
        return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


_initialized = False


def initialize(d: DistributedSection) -> None:
    """Join the other processes when ``d`` says so (once per process; before any device use)."""
    global _initialized
    if _initialized or not d.wanted():
        return
    import jax

    # CPU hosts (tests, CPU clusters) need gloo for collectives across processes; a no-op for
    # the TPU and GPU backends, which bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address or None,
        num_processes=d.num_processes,
        process_id=d.process_id,
        initialization_timeout=d.initialization_timeout_s,
        heartbeat_timeout_seconds=d.heartbeat_timeout_s,
    )
    _initialized = True


def process_index() -> int:
    """This process's index (0 when it joined no others: then no JAX backend is started for it,
    so stages without devices, like ``generate``, stay free of JAX)."""
    if not _initialized:
        return 0
    import jax

    return jax.process_index()


def process_count() -> int:
    """How many processes take part (1 unless ``initialize`` joined others)."""
    if not _initialized:
        return 1
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[bool]:
    """``with primary_first("x") as mine:`` -- process 0 runs the body (``mine`` true) while the
    others wait; then all go on together. For writes every process must see before reading."""
    mine = is_primary()
    try:
        yield mine
    finally:
        barrier(name)


def agree(flag: bool) -> bool:
    """Process 0's ``flag``, on every process (a decision read from files only it wrote)."""
    if process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def share(value: Any) -> Any:
    """Process 0's ``value`` (any picklable object; the others pass anything, e.g. None) on every
    process: what only process 0 computed, such as a GRPO batch from its rollouts."""
    if process_count() == 1:
        return value
    import pickle

    import numpy as np
    from jax.experimental import multihost_utils

    data = pickle.dumps(value) if is_primary() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
    buf = np.frombuffer(data, np.uint8) if is_primary() else np.zeros(size, np.uint8)
    # pickle is safe here: the bytes come from process 0 of this same program, not from outside
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def agreed_max(value: int) -> int:
    """The largest of every process's ``value`` (e.g. the padded width of a batch whose rows
    each process built for itself)."""
    if process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))
