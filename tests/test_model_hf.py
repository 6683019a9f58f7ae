import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_models import VARIANTS, write_tiny

from eigen_jax.model import DecoderConfig, positions_from_mask
from eigen_jax.model.hf import load_hf, save_hf


def _batch(vocab, seed=0, b=4, t=13):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :5] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    mask[3, :2] = 0
    mask[3, 11:] = 0
    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
    return ids, mask, pos


def _hf_logits(model, ids, mask, pos):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_and_export_round_trips(variant, tmp_path):
    hf_model, path = write_tiny(variant, tmp_path)
    model = load_hf(path)
    ids, mask, pos = _batch(hf_model.config.vocab_size)
    ref = _hf_logits(hf_model, ids, mask, pos)
    ours, _ = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=1e-4, rtol=0)

    out = save_hf(model, tmp_path / "export")
    reloaded = type(hf_model).from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(_hf_logits(reloaded, ids, mask, pos)[real], ref[real], atol=1e-4, rtol=0)
    again = load_hf(out)
    np.testing.assert_array_equal(
        np.asarray(again(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))[0]), np.asarray(ours)
    )


def test_sharded_index_and_bf16(tmp_path):
    hf_model, path = write_tiny("qwen3", tmp_path)
    model = load_hf(path)
    out = save_hf(model, tmp_path / "sharded", max_shard_bytes=20_000, dtype=jnp.bfloat16)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    bf = load_hf(out, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert bf.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    ids, mask, pos = _batch(hf_model.config.vocab_size)
    a = np.asarray(model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))[0])
    b = np.asarray(bf(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))[0])
    real = mask.astype(bool)
    assert np.abs(a - b)[real].max() < 0.05  # bf16 rounding, not a wiring error
    assert np.corrcoef(a[real].ravel(), b[real].ravel())[0, 1] > 0.999


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        DecoderConfig.from_hf({"model_type": "gpt2"})
    base = {
        "model_type": "llama",
        "vocab_size": 8,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        DecoderConfig.from_hf({**base, "rope_scaling": {"type": "yarn", "factor": 2.0}})
    cfg = DecoderConfig.from_hf({**base, "rope_theta": 5.0})  # transformers 4.x layout
    assert cfg.rope_theta == 5.0 and cfg.num_key_value_heads == 2 and cfg.head_dim == 4
    _, path = write_tiny("qwen3", tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_hf(path)
