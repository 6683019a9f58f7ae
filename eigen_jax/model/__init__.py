"""The decoder shared by learner and sampler, its HF checkpoint I/O and its sharding rules."""

from eigen_jax.model.config import DecoderConfig
from eigen_jax.model.decoder import Decoder, LayerCache, positions_from_mask

__all__ = ["Decoder", "DecoderConfig", "LayerCache", "positions_from_mask"]
