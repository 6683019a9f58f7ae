"""The decoder shared by learner and sampler, its HF checkpoint I/O and its sharding rules.

Names load lazily: ``eigen_jax.model.config`` (what config validation reads) imports no JAX, and
importing it must not pull the decoder in (the front door runs device-free stages without JAX).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DecoderConfig": "eigen_jax.model.config",
    "Decoder": "eigen_jax.model.decoder",
    "LayerCache": "eigen_jax.model.decoder",
    "positions_from_mask": "eigen_jax.model.decoder",
}

__all__ = ["Decoder", "DecoderConfig", "LayerCache", "positions_from_mask"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'eigen_jax.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
