"""Recorded MoE routes: which experts each token went to in each sparse layer, compactly.

An MoE engine records, per token it computed, the top-k experts of every sparse layer; the
learner replays them (``grpo.routing_replay``) so that it recomputes logprobs through the same
experts the sampler used. Stored as little-endian uint8 (up to 255 experts) or uint16, base64 in
JSON: 30B-A3B's 48 layers x top-8 are 384 bytes a token. The dtype's largest value marks a token
whose routes are unknown (context the engine never computed, or a dense engine's).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ExpertRoutes(BaseModel):
    """[tokens, layers, k] expert ids (``array()``); rows of ``UNKNOWN`` are tokens without routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(ge=0)
    layers: int = Field(ge=1)
    k: int = Field(ge=1)
    width: Literal[1, 2] = 1
    """Bytes per expert id (1: uint8, up to 255 experts; 2: uint16)."""
    data: str = ""
    """base64 of the little-endian array."""

    @model_validator(mode="after")
    def _size(self) -> ExpertRoutes:
        n = len(base64.b64decode(self.data)) if self.data else 0
        want = self.tokens * self.layers * self.k * self.width
        if n != want:
            raise ValueError(
                f"routes: {n} bytes of data, shape ({self.tokens}, {self.layers}, {self.k}) needs {want}"
            )
        return self

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u1" if self.width == 1 else "<u2")

    @property
    def unknown(self) -> int:
        """The id that marks a token without routes."""
        return int(np.iinfo(self.dtype).max)

    def array(self) -> np.ndarray:
        """[tokens, layers, k] int32; ``unknown`` where a token has no routes."""
        raw = np.frombuffer(base64.b64decode(self.data), self.dtype) if self.data else np.zeros(0, self.dtype)
        return raw.reshape(self.tokens, self.layers, self.k).astype(np.int32)

    def known(self, array: np.ndarray | None = None) -> np.ndarray:
        """[tokens] bool: which tokens have routes (``array``: this record's ``array()``, if
        already decoded)."""
        a = self.array() if array is None else array
        return ~np.all(a == self.unknown, axis=(1, 2))

    @classmethod
    def from_array(cls, experts: np.ndarray, width: Literal[1, 2]) -> ExpertRoutes:
        """From [tokens, layers, k] ids (negative: unknown), ``width`` bytes each (``width_for``)."""
        dtype = np.dtype("<u1" if width == 1 else "<u2")
        a = np.asarray(experts)
        if a.ndim != 3:
            raise ValueError(f"routes: expected [tokens, layers, k], got shape {a.shape}")
        if a.size and int(a.max()) >= np.iinfo(dtype).max:
            raise ValueError(f"routes: expert id {int(a.max())} does not fit {width} byte(s)")
        a = np.where(a < 0, np.iinfo(dtype).max, a).astype(dtype)
        data = base64.b64encode(a.tobytes()).decode()
        return cls(tokens=a.shape[0], layers=a.shape[1], k=a.shape[2], width=width, data=data)


def width_for(num_experts: int) -> Literal[1, 2]:
    """Bytes per expert id for a model with ``num_experts`` (one id is kept for ``unknown``)."""
    if num_experts >= 65535:
        raise ValueError(f"routes: {num_experts} experts do not fit 16-bit ids")
    return 1 if num_experts < 255 else 2


def route_rows(routes: ExpertRoutes | None, tokens: int) -> np.ndarray | None:
    """[tokens, layers, k] ids of a sequence whose last ``routes.tokens`` have routes (-1: none)."""
    if routes is None:
        return None
    a = routes.array()
    a[~routes.known(a)] = -1
    lead = np.full((tokens - len(a), *a.shape[1:]), -1, np.int32)
    return np.concatenate([lead, a])


def padded_routes(
    routes: list[ExpertRoutes | None],
    length: int,
    layers: int,
    k: int,
    starts: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """[rows, length, layers, k] int32 expert ids and the [rows, length] bool replay mask (where a
    row's token has recorded routes) for a batch of right-padded rows cut at ``length``; row r's
    record covers its tokens from ``starts[r]`` on (default 0: all of them)."""
    out = np.zeros((len(routes), length, layers, k), np.int32)
    known = np.zeros((len(routes), length), bool)
    for r, rec in enumerate(routes):
        if rec is None:
            continue
        if (rec.layers, rec.k) != (layers, k):
            raise ValueError(
                f"routes of row {r}: ({rec.layers} layers, top-{rec.k}), the model has ({layers}, {k})"
            )
        start = 0 if starts is None else starts[r]
        n = max(min(rec.tokens, length - start), 0)
        a = rec.array()[:n]
        m = rec.known(a)
        out[r, start : start + n] = np.where(m[:, None, None], a, 0)
        known[r, start : start + n] = m
    return out, known


class RouteLayout(BaseModel):
    """Where an MoE policy's routes sit in an engine's answer: what a client needs to turn
    vLLM's per-layer ``routed_experts`` into ``ExpertRoutes`` (sparse layers only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    moe_layers: tuple[int, ...] = Field(min_length=1)
    """The decoder layers that are sparse (vLLM answers for every layer)."""
    num_experts: int = Field(ge=1)
    k: int = Field(ge=1)
    """Experts per token."""

    @classmethod
    def of(cls, cfg: Any) -> RouteLayout:
        """The layout of a model config (``DecoderConfig``: ``moe_layers``, ``num_experts``,
        ``num_experts_per_tok``)."""
        return cls(moe_layers=cfg.moe_layers, num_experts=cfg.num_experts, k=cfg.num_experts_per_tok)


def _npy_b64(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def routes_from_vllm(data: str, layout: RouteLayout, tokens: int) -> ExpertRoutes:
    """vLLM's ``routed_experts`` (base64 of a ``.npy`` [n, layers, k] array: the experts of every
    token from ``routed_experts_prompt_start`` on, but the last sampled one, which no forward pass
    has seen) -> ``ExpertRoutes`` of the request's last n + 1 tokens, that last one unknown.
    ``tokens``: prompt + completion tokens of the request (n is at most ``tokens`` - 1). Ids of
    ``num_experts`` or more mark unknown tokens (``routes_to_vllm``'s tokens without routes)."""
    try:
        a = np.load(io.BytesIO(base64.b64decode(data, validate=True)), allow_pickle=False)
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"routed_experts: not a base64 .npy array ({e})") from None
    need = max(layout.moe_layers) + 1
    if a.ndim != 3 or a.shape[1] < need or a.shape[2] != layout.k or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"routed_experts: shape {a.shape} ({a.dtype}), "
            f"expected [tokens, >= {need} layers, {layout.k}] expert ids"
        )
    if a.shape[0] > tokens - 1:
        raise ValueError(f"routed_experts: {a.shape[0]} tokens, more than the request's {tokens} - 1")
    ids = a[:, list(layout.moe_layers)].astype(np.int64)
    ids = np.where((ids < 0) | (ids >= layout.num_experts), -1, ids)
    last = np.full((1, len(layout.moe_layers), layout.k), -1)
    return ExpertRoutes.from_array(np.concatenate([ids, last]), width_for(layout.num_experts))


def routes_to_vllm(
    routes: ExpertRoutes | None, layout: RouteLayout, num_layers: int, tokens: int, start: int
) -> str:
    """The inverse, for a server that answers as vLLM does: ``routes`` covers the last
    ``routes.tokens`` of the request's ``tokens``; the answer covers tokens ``start`` .. ``tokens``
    - 2, every layer (dense layers' rows 0), tokens without routes marked by the dtype's largest
    id."""
    width = width_for(layout.num_experts)
    dtype = np.dtype("<u1" if width == 1 else "<u2")
    n = max(tokens - 1 - start, 0)
    out = np.zeros((n, num_layers, layout.k), dtype)
    full = np.full((tokens, len(layout.moe_layers), layout.k), np.iinfo(dtype).max, dtype)
    if routes is not None and routes.tokens:
        full[tokens - routes.tokens :] = routes.array().astype(dtype)
    out[:, list(layout.moe_layers)] = full[start : start + n]
    return _npy_b64(out)
