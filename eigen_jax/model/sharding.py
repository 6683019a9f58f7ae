"""Device meshes with (data, fsdp, tensor, expert) axes and per-family parameter partition rules.

A rule maps a parameter path (``layers.3.self_attn.q_proj.kernel``) to a ``PartitionSpec``.
Kernels are [in, out]: column-parallel projections (q/k/v, gate/up, lm_head) split ``out`` over
``tensor`` and ``in`` over ``fsdp``; row-parallel ones (o, down) the reverse, so a block needs one
all-reduce per matmul pair. A dimension that a mesh axis does not divide is left unsplit.

The ``expert`` axis splits an MoE layer's stacked experts ([E, in, out]) over its devices; every
other tensor treats it as one more batch axis (activations split over data x fsdp x expert), so
the devices of an expert group hold different experts and different rows, as in GShard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor", "expert")
BATCH = ("data", "fsdp", "expert")
"""Mesh axes the batch dimension of activations is split over."""

_DECODER_RULES: list[tuple[str, P]] = [
    (r"embed_tokens$", P("tensor", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.kernel$", P("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.bias$", P("tensor")),
    (r"(o_proj|down_proj)\.kernel$", P("tensor", "fsdp")),
    (r"lm_head\.kernel$", P("fsdp", "tensor")),
    (r".*", P()),  # norms, output biases: replicated
]

_MOE_RULES: list[tuple[str, P]] = [
    (r"experts\.(gate_proj|up_proj)$", P("expert", "fsdp", "tensor")),
    (r"experts\.down_proj$", P("expert", "tensor", "fsdp")),
    (r"mlp\.gate\.kernel$", P("fsdp")),  # the router: small, its experts' axis unsplit
    *_DECODER_RULES,
]

RULES: dict[str, list[tuple[str, P]]] = {
    "qwen3": _DECODER_RULES,
    "qwen3_moe": _MOE_RULES,
    "llama": _DECODER_RULES,
    "qwen2": _DECODER_RULES,
}
"""Partition rules per model family (first matching regex wins)."""


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor, expert) mesh from three or four sizes (expert defaults to 1); one
    ``-1`` entry takes the remaining devices."""
    devs = list(devices) if devices is not None else jax.devices()
    shape = list(shape)
    if shape.count(-1) > 1 or len(shape) not in (3, 4):
        raise ValueError(f"mesh shape {shape}: sizes of (data, fsdp, tensor[, expert]), at most one -1")
    shape += [1] * (4 - len(shape))
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = len(devs) // known
    if int(np.prod(shape)) != len(devs):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devs)}")
    return Mesh(np.asarray(devs).reshape(shape), AXES)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop axes that do not divide their dimension (e.g. tiny test models on 8 devices)."""
    dims = []
    for i, axis in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axis,) if isinstance(axis, str) else tuple(axis or ())
        size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
        dims.append(axis if names and shape[i] % size == 0 else None)
    while dims and dims[-1] is None:  # P("x", None) == P("x") in meaning; keep the short form
        dims.pop()
    return P(*dims)


def param_name(path: tuple) -> str:
    """An nnx state path as the dotted name the rules match: ``layers.0.mlp.up_proj.kernel``."""
    return ".".join(str(p) for p in path)


def spec_for(path: str, shape: tuple[int, ...], family: str, mesh: Mesh) -> P:
    for pattern, spec in RULES[family]:
        if re.search(pattern, path):
            return _fit(spec, shape, mesh)
    raise AssertionError("the last rule matches everything")


def param_specs(model: nnx.Module, mesh: Mesh) -> dict[str, P]:
    """``{"layers.0.self_attn.q_proj.kernel": PartitionSpec, ...}`` for ``model`` on ``mesh``."""
    family = model.cfg.family
    return {
        param_name(path): spec_for(param_name(path), var.shape, family, mesh)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place ``model``'s parameters on ``mesh`` by the family's rules (in place; returns it)."""
    family = model.cfg.family

    def place(path, var):
        spec = spec_for(param_name(path), var.shape, family, mesh)
        return var.replace(jax.device_put(var[...], NamedSharding(mesh, spec)))

    nnx.update(model, nnx.map_state(place, nnx.state(model, nnx.Param)))
    return model


def batch_ways(mesh: Mesh) -> int:
    """Into how many parts the batch dimension is split (the product of ``BATCH``'s sizes)."""
    return int(np.prod([mesh.shape.get(a, 1) for a in BATCH]))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for [batch, ...] inputs: batch over ``BATCH`` axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))
