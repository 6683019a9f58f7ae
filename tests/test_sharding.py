import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_models import write_tiny
from jax.sharding import PartitionSpec as P

from eigen_jax.model import positions_from_mask
from eigen_jax.model.hf import load_hf
from eigen_jax.model.sharding import batch_sharding, make_mesh, param_specs, shard_model, spec_for
from eigen_jax.ops import next_token_logprobs

MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)]


def _loss(model, ids, pos, mask):
    logits, _ = model(ids, pos, mask)
    lp = next_token_logprobs(logits, ids)
    m = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
    return -(lp * m).sum() / m.sum(), logits


def _run(model, ids, pos, mask):
    (loss, logits), grads = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))(model, ids, pos, mask)
    return loss, logits, nnx.to_flat_state(grads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 fake CPU devices"
    _, path = write_tiny("qwen3", tmp_path_factory.mktemp("m"))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 256, (8, 16))
    mask = np.ones((8, 16), np.int32)
    mask[::3, :5] = 0
    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
    ref = _run(load_hf(path), jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    return path, ids, pos, mask, ref


@pytest.mark.parametrize("shape", MESHES)
def test_forward_loss_and_grads_match_single_device(setup, shape):
    path, ids, pos, mask, (ref_loss, ref_logits, ref_grads) = setup
    mesh = make_mesh(shape)
    model = shard_model(load_hf(path), mesh)
    q = model.layers[0].self_attn.q_proj.kernel[...]
    assert q.sharding.spec == spec_for("layers.0.self_attn.q_proj.kernel", q.shape, "qwen3", mesh)
    if shape[2] > 1:
        assert len({str(s.index) for s in q.addressable_shards}) > 1  # really split
    batch = [jax.device_put(jnp.asarray(x), batch_sharding(mesh)) for x in (ids, pos, mask)]
    loss, logits, grads = _run(model, *batch)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    for (path_a, ga), (path_b, gb) in zip(grads, ref_grads, strict=True):
        assert path_a == path_b
        np.testing.assert_allclose(np.asarray(ga[...]), np.asarray(gb[...]), atol=1e-6, err_msg=str(path_a))


def test_rules_and_mesh_shapes():
    mesh = make_mesh((2, 2, 2))
    assert spec_for("layers.1.mlp.down_proj.kernel", (128, 64), "llama", mesh) == P("tensor", "fsdp")
    assert spec_for("embed_tokens", (255, 64), "qwen3", mesh) == P(None, "fsdp")  # 255 is odd: vocab unsplit
    assert spec_for("norm.weight", (64,), "qwen2", mesh) == P()
    assert make_mesh((1, -1, 2)).shape == {"data": 1, "fsdp": 4, "tensor": 2, "expert": 1}
    assert make_mesh((1, 2, 1, -1)).shape == {"data": 1, "fsdp": 2, "tensor": 1, "expert": 4}
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh((4, 4, 1))
    with pytest.raises(ValueError, match=r"\(data, fsdp, tensor\[, expert\]\)"):
        make_mesh((1, 2, 2, 2, 1))
    # experts split over `expert` first; a dense family has no expert rule
    moe = make_mesh((1, 2, 1, 4))
    assert spec_for("layers.0.mlp.experts.down_proj", (8, 32, 64), "qwen3_moe", moe) == P(
        "expert", "tensor", "fsdp"
    )
    assert spec_for("layers.0.mlp.gate.kernel", (64, 8), "qwen3_moe", moe) == P("fsdp")
    assert spec_for("layers.1.mlp.gate_proj.kernel", (64, 128), "qwen3_moe", moe) == P("fsdp", "tensor")


def test_load_hf_places_tensors_on_the_mesh(setup):
    path, ids, pos, mask, (_, ref_logits, _) = setup
    mesh = make_mesh((1, 4, 2))
    model = load_hf(path, mesh=mesh)
    for name, spec in param_specs(model, mesh).items():
        node = model
        for part in name.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        assert node[...].sharding.spec == spec, name
    logits, _ = nnx.jit(lambda m, *a: m(*a))(model, *(jnp.asarray(x) for x in (ids, pos, mask)))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
