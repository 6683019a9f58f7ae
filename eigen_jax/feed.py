"""Global batches fed by their owners: each process builds only the rows its devices hold.

A batch of ``n`` rows is sharded over the mesh's (data, fsdp) axes; each device holds a slice of
rows. Every process knows the batch's *row indices* (a pure function of the seed and the step:
grain's shuffled index stream), asks the stage's ``build`` for the rows its own devices hold, and
the global array is assembled from those per-device pieces. No process reads, pads or transfers
another's rows, and the batch is the same whatever the number of processes: the data position
is one position of the index stream, so a checkpoint restores on any number of processes.

Padding columns are cut to one width every process agrees on (the widest used one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from eigen_jax.distributed import agreed_max
from eigen_jax.model.sharding import batch_sharding, batch_ways

HostBatch = dict[str, np.ndarray]
Batch = dict[str, jax.Array]
Build = Callable[[np.ndarray], HostBatch]
"""``build(rows)``: host arrays for the global row indices ``rows`` (in that order)."""


def row_slices(index_map: dict[Any, tuple], devices: Iterable[Any], n: int) -> dict[Any, range]:
    """For each of ``devices``: the rows (leading-axis range of ``n``) it holds, from a
    sharding's ``devices_indices_map`` (an unsharded axis is ``slice(None)``: every row)."""
    out = {}
    for d in devices:
        rows = index_map[d][0]
        out[d] = range(*rows.indices(n)) if isinstance(rows, slice) else range(rows, rows + 1)
    return out


def local_rows(slices: dict[Any, range]) -> np.ndarray:
    """The sorted, distinct global rows that the devices of ``slices`` hold (devices replicating
    one slice over the tensor axis need it once)."""
    rows = sorted({r for s in slices.values() for r in s})
    return np.asarray(rows, np.int64)


def used_width(batch: HostBatch, multiple: int) -> int:
    """Columns up to the last one any row attends to, rounded up to ``multiple`` (at least
    ``multiple``, at most the batch's width)."""
    width = batch["attn_mask"].shape[1]
    used = int(batch["attn_mask"].any(axis=0).nonzero()[0].max(initial=-1)) + 1
    return min(width, max(multiple, -(-used // multiple) * multiple))


def cut_columns(batch: HostBatch, width: int) -> HostBatch:
    """``batch`` with its [N, T] arrays cut to ``width`` columns."""
    return {k: v[:, :width] if v.ndim == 2 else v for k, v in batch.items()}


def trim_padding(batch: HostBatch, multiple: int = 128) -> HostBatch:
    """``batch`` with its trailing all-padding columns cut, keeping a multiple of ``multiple``
    columns (few shapes, so few compiles). Exact for right-padded rows: the cut columns hold
    nothing any row attends to or is trained on; it spares their compute."""
    return cut_columns(batch, used_width(batch, multiple))


def feed(mesh: Mesh | None, n: int, build: Build, trim: int | None = None) -> Batch:
    """The global ``n``-row batch on ``mesh``, each process building only its devices' rows.

    ``trim``: cut trailing padding columns to a multiple of it (the width agreed by all
    processes). Without a mesh: the whole batch on the default device."""
    if mesh is None:
        rows = np.arange(n)
    else:
        ways = batch_ways(mesh)
        if n % ways:
            raise ValueError(
                f"a batch of {n} sequences does not split over the mesh's data x fsdp x expert = {ways} "
                "devices: make the batch size a multiple of it (or change model.mesh)"
            )
        sharding = batch_sharding(mesh, 1)
        slices = row_slices(sharding.devices_indices_map((n,)), sharding.addressable_devices, n)
        rows = local_rows(slices)
    host = build(rows)
    if trim:
        host = cut_columns(host, agreed_max(used_width(host, trim)))
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in host.items()}
    where = {int(r): i for i, r in enumerate(rows)}
    out = {}
    for key, value in host.items():
        if len(value) != len(rows):
            raise ValueError(f"build gave {len(value)} rows of {key!r} for {len(rows)} row indices")
        shard = batch_sharding(mesh, value.ndim)
        pieces = [
            jax.device_put(value[where[s.start] : where[s.start] + len(s)], d) for d, s in slices.items()
        ]
        out[key] = jax.make_array_from_single_device_arrays((n, *value.shape[1:]), shard, pieces)
    return out


def take(batch: HostBatch) -> Build:
    """A ``build`` over a batch every process holds whole (rollouts shared by process 0, eval
    sets): its rows by index."""
    return lambda rows: {k: v[rows] for k, v in batch.items()}
