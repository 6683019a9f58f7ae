"""HF checkpoints in and out, without torch.

``load_hf(dir)`` reads ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``) tensor by tensor into (optionally mesh-sharded) JAX arrays.
``save_hf(model, dir)`` writes ``config.json`` and safetensors that transformers and vLLM load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from eigen_jax.model.config import DecoderConfig
from eigen_jax.model.decoder import Decoder
from eigen_jax.model.sharding import param_name, spec_for

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


def hf_key(path: tuple) -> tuple[str, bool]:
    """Our parameter path -> (HF state-dict key, whether the tensor is transposed)."""
    parts = [str(p) for p in path]
    if parts == ["embed_tokens"]:
        return "model.embed_tokens.weight", False
    transpose = parts[-1] == "kernel"
    if transpose:
        parts[-1] = "weight"
    prefix = "" if parts[0] == "lm_head" else "model."
    return prefix + ".".join(parts), transpose


_EXPERT = ("gate_proj", "up_proj", "down_proj")


def _expert_param(path: tuple) -> str | None:
    """``gate_proj`` / ``up_proj`` / ``down_proj`` for a stacked expert kernel, else None."""
    parts = [str(p) for p in path]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "experts" and parts[-1] in _EXPERT else None


def expert_keys(path: tuple, num_experts: int) -> list[str]:
    """HF keys of a stacked [E, in, out] expert kernel: one [out, in] weight per expert, as the
    released Qwen3-MoE checkpoints, transformers' ``save_pretrained`` and vLLM name them."""
    parts = [str(p) for p in path]
    prefix = "model." + ".".join(parts[:-1])
    return [f"{prefix}.{e}.{parts[-1]}.weight" for e in range(num_experts)]


def _expert_block(tensors: _Tensors, path: tuple, shape: tuple[int, ...]) -> Any:
    """A block reader for a stacked expert kernel from per-expert tensors or from the fused
    in-memory layout of transformers 5 (``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj``
    [E, H, I]); raises KeyError naming the per-expert key when neither is there."""
    name, e = _expert_param(path), shape[0]
    keys = expert_keys(path, e)
    if keys[0] in tensors.files:
        for k in keys:
            got = tensors.shape(k)
            if got[::-1] != shape[1:]:
                raise ValueError(f"{k} has shape {got[::-1]} (transposed), the config implies {shape[1:]}")

        def per_expert(index: tuple[slice, ...]) -> np.ndarray:
            es, rows, cols = index
            return np.stack([tensors.block(keys[i], (cols, rows)).T for i in range(e)[es]])

        return per_expert
    fused = keys[0].rsplit(".", 3)[0] + (".down_proj" if name == "down_proj" else ".gate_up_proj")
    if fused not in tensors.files:
        raise KeyError(keys[0])
    inter = shape[2] if name != "down_proj" else shape[1]
    offset = inter if name == "up_proj" else 0

    def from_fused(index: tuple[slice, ...]) -> np.ndarray:
        es, rows, cols = index
        if name == "down_proj":  # stored [E, H, I]; ours [E, I, H]
            return tensors.block(fused, (es, cols, rows)).transpose(0, 2, 1)
        i0, i1, _ = cols.indices(inter)
        return tensors.block(fused, (es, slice(offset + i0, offset + i1), rows)).transpose(0, 2, 1)

    return from_fused


def _abstract(cfg: DecoderConfig, dtype, param_dtype) -> Decoder:
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))


class _Tensors:
    """Reads tensors by name from a single or index-sharded safetensors checkpoint."""

    def __init__(self, root: Path):
        index = root / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {k: root / f for k, f in weight_map.items()}
        elif (root / "model.safetensors").exists():
            with safe_open(root / "model.safetensors", framework="numpy") as f:
                self.files = {k: root / "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{root}: no model.safetensors or model.safetensors.index.json")
        self._open: dict[Path, Any] = {}

    def _file(self, key: str) -> Any:
        if key not in self.files:
            raise KeyError(key)
        path = self.files[key]
        if path not in self._open:
            self._open[path] = safe_open(path, framework="numpy")
        return self._open[path]

    def get(self, key: str) -> np.ndarray:
        return self._file(key).get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file(key).get_slice(key).get_shape())

    def block(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        """Only the part of tensor ``key`` at ``index`` (read from disk, not the whole tensor)."""
        return np.asarray(self._file(key).get_slice(key)[index])


def _once_per_block(read: Any) -> Any:
    """``read`` called once per distinct block (replicated tensors: once, not once per device)."""
    seen: dict[tuple, np.ndarray] = {}

    def cached(index: tuple[slice, ...]) -> np.ndarray:
        k = tuple((s.start, s.stop, s.step) for s in index)
        if k not in seen:
            seen[k] = read(index)
        return seen[k]

    return cached


def load_hf(
    root: str | Path,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    mesh: Mesh | None = None,
) -> Decoder:
    """A ``Decoder`` with the weights of the HF checkpoint in ``root``, sharded over ``mesh``.

    With a mesh, each device's block of each tensor is read from disk on its own (placed by the
    family's partition rules): a process reads only the blocks of its own devices, so on several
    hosts no host reads, or holds, the whole model.
    """
    root = Path(root)
    cfg = DecoderConfig.from_hf(json.loads((root / "config.json").read_text()))
    model = _abstract(cfg, dtype, param_dtype)
    tensors = _Tensors(root)
    state = nnx.state(model, nnx.Param)
    missing: list[str] = []

    def reader(path, shape):
        if _expert_param(path):
            return _expert_block(tensors, path, shape)
        key, transpose = hf_key(path)
        stored = tensors.shape(key)
        if (stored[::-1] if transpose else stored) != shape:
            raise ValueError(
                f"{key} has shape {stored[::-1] if transpose else stored}, the config implies {shape}"
            )
        return lambda index: (lambda a: a.T if transpose else a)(
            tensors.block(key, tuple(index)[::-1] if transpose else tuple(index))
        )

    def load(path, var):
        shape = var.shape
        try:
            read = reader(path, shape)
        except KeyError as e:
            missing.append(e.args[0])
            return var
        except ValueError as e:
            raise ValueError(f"{root}: {e}") from None

        def block(index: tuple[slice, ...]) -> np.ndarray:
            return np.ascontiguousarray(read(tuple(index))).astype(param_dtype)

        if mesh is None:
            return var.replace(jnp.asarray(block((slice(None),) * len(shape))))
        sharding = jax.sharding.NamedSharding(mesh, spec_for(param_name(path), shape, cfg.family, mesh))
        return var.replace(jax.make_array_from_callback(shape, sharding, _once_per_block(block)))

    state = nnx.map_state(load, state)
    if missing:
        raise ValueError(f"{root}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    nnx.update(model, state)
    return model


def host_array(x: jax.Array) -> np.ndarray:
    """``x`` on the host, whole: fetched, or, when it spans other processes' devices, gathered
    from all of them (a collective: every process must call it for the same array)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensors(path: tuple, arr: np.ndarray) -> dict[str, np.ndarray]:
    """One parameter as the HF tensors it is stored as (a stacked expert kernel: one per expert)."""
    if _expert_param(path):
        keys = expert_keys(path, arr.shape[0])
        return {k: np.ascontiguousarray(arr[e].T) for e, k in enumerate(keys)}
    key, transpose = hf_key(path)
    return {key: np.ascontiguousarray(arr.T if transpose else arr)}


def save_hf(
    model: Decoder,
    root: str | Path,
    *,
    dtype=None,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write ``model`` as an HF checkpoint (config.json + safetensors, sharded past
    ``max_shard_bytes``), optionally with the tokenizer files from ``tokenizer_dir``.

    ``dtype`` is the stored dtype (default: the parameters' own). Across processes every process
    takes part in gathering each tensor and process 0 writes. Shards are planned from the shapes,
    then gathered and written one at a time: host memory peaks at one shard, not the model.
    """
    root = Path(root)
    hf_cfg = model.cfg.to_hf()
    params = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    stored = np.dtype(dtype or params[0][1][...].dtype)
    hf_cfg["torch_dtype"] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
        str(stored), "float32"
    )
    hf_cfg["dtype"] = hf_cfg["torch_dtype"]
    plan: list[list[int]] = [[]]
    size = 0
    for i, (_, var) in enumerate(params):
        nbytes = int(np.prod(var[...].shape)) * (
            stored.itemsize if dtype else np.dtype(var[...].dtype).itemsize
        )
        if size and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(i)
        size += nbytes
    primary = jax.process_index() == 0
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    names = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    weight_map, total = {}, 0
    for name, members in zip(names, plan, strict=True):
        shard: dict[str, np.ndarray] = {}
        for i in members:  # every process takes part in each gather
            path, var = params[i]
            arr = host_array(var[...])
            shard.update(_hf_tensors(path, arr.astype(dtype) if dtype is not None else arr))
        if primary:
            save_file(shard, root / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        total += sum(a.nbytes for a in shard.values())
        del shard
    if not primary:
        return root
    if len(plan) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copy(src, root / name)
    return root
