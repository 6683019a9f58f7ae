"""Qwen3-MoE: routing, grouped expert compute, the load-balancing loss, HF layouts, expert
parallelism and routing replay at the model level (HF logit parity: tests/test_model_hf.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_models import write_tiny
from safetensors.numpy import load_file, save_file

from eigen_jax.model import DecoderConfig, positions_from_mask
from eigen_jax.model.hf import load_hf
from eigen_jax.model.moe import Forced, grouped_ffn, grouped_matmul, kernel_for, route
from eigen_jax.model.sharding import batch_sharding, make_mesh, shard_model, spec_for
from eigen_jax.ops import next_token_logprobs


def _batch(vocab, b=8, t=12, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, t))
    mask = np.ones((b, t), np.int32)
    mask[::3, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    return ids, mask, np.asarray(positions_from_mask(jnp.asarray(mask)))


def test_grouped_ffn_equals_every_expert_on_every_token():
    rng = np.random.default_rng(0)
    n, h, i, e, k = 10, 6, 5, 4, 2
    x = jnp.asarray(rng.normal(size=(n, h)), jnp.float32)
    gate, up = (jnp.asarray(rng.normal(size=(e, h, i)), jnp.float32) for _ in range(2))
    down = jnp.asarray(rng.normal(size=(e, i, h)), jnp.float32)
    routing = route(jnp.asarray(rng.normal(size=(n, e)), jnp.float32), k, norm_topk_prob=True)
    got = grouped_ffn(x, routing, gate, up, down, jnp.float32)
    every = jnp.einsum(
        "nei,eih->neh",
        jax.nn.silu(jnp.einsum("nh,ehi->nei", x, gate)) * jnp.einsum("nh,ehi->nei", x, up),
        down,
    )
    picked = jnp.take_along_axis(every, routing.experts[:, :, None], axis=1)  # [n, k, h]
    want = (picked * routing.weights[:, :, None]).sum(1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # an expert nobody chose contributes nothing, and its gradient is zero
    unused = sorted(set(range(e)) - set(np.asarray(routing.experts).ravel().tolist()))
    g = jax.grad(lambda w: grouped_ffn(x, routing, w, up, down, jnp.float32).sum())(gate)
    for u in unused:
        assert float(jnp.abs(g[u]).max()) == 0.0


def test_megablox_kernel_equals_ragged_dot():
    """The Pallas grouped matmul (in its interpreter here) against XLA's ragged_dot: values and
    both gradients, with an empty run, a last run that no kernel takes (other devices' experts)
    and a row count that is not a multiple of its tile."""
    rng = np.random.default_rng(3)
    m, k, n = 45, 64, 48
    a = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, k, n)), jnp.float32)
    sizes = jnp.asarray([7, 0, 20, 9, 9], jnp.int32)  # the last 9 rows: nobody's here

    def loss(kernel):
        return lambda a, w: jnp.sum(jnp.sin(grouped_matmul(a, w, sizes, kernel, interpret=True)))

    want = grouped_matmul(a, w, sizes, "ragged_dot")
    got = grouped_matmul(a, w, sizes, "megablox", interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got[36:]).max()) == 0.0
    ga, gw = jax.grad(loss("megablox"), (0, 1))(a, w)
    ra, rw = jax.grad(loss("ragged_dot"), (0, 1))(a, w)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(ra), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(gw[1]).max()) == 0.0  # the empty run's kernel gets no gradient


@pytest.mark.parametrize(
    "sizes",
    [[7, 0, 20, 9, 9], [7, 0, 20, 18, 0], [0, 3, 0, 0, 42], [12, 12, 11, 10, 0]],
    ids=["untaken-rows", "all-taken", "one-run", "even"],
)
def test_tiled_kernel_equals_ragged_dot(sizes):
    """The plain-JAX tiled grouped matmul against XLA's ragged_dot: values and both gradients,
    with empty runs, rows no kernel takes, and runs that do not fill their tiles."""
    rng = np.random.default_rng(4)
    m, k, n = 45, 64, 48
    a = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, k, n)), jnp.float32)
    sizes = jnp.asarray(sizes, jnp.int32)
    taken = int(sizes[:4].sum())

    def loss(kernel):
        return lambda a, w: jnp.sum(jnp.sin(grouped_matmul(a, w, sizes, kernel)))

    want = grouped_matmul(a, w, sizes, "ragged_dot")
    got = jax.jit(lambda a, w: grouped_matmul(a, w, sizes, "tiled"))(a, w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got[taken:]).max(initial=0.0)) == 0.0
    ga, gw = jax.grad(loss("tiled"), (0, 1))(a, w)
    ra, rw = jax.grad(loss("ragged_dot"), (0, 1))(a, w)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(ra), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=1e-5, atol=1e-5)
    for e in np.flatnonzero(np.asarray(sizes[:4]) == 0):
        assert float(jnp.abs(gw[e]).max()) == 0.0  # an empty run's kernel gets no gradient


def test_kernel_choice():
    assert kernel_for("auto", "tpu") == "megablox"
    assert kernel_for("auto", "cpu") == "tiled" and kernel_for("auto", "gpu") == "ragged_dot"
    assert kernel_for("megablox", "cpu", interpret=True) == "megablox"
    with pytest.raises(ValueError, match="megablox is a TPU"):
        kernel_for("megablox", "gpu")
    with pytest.raises(ValueError, match=r"model\.moe_kernel 'gmm'"):
        kernel_for("gmm", "tpu")


def test_route_top_k_renormalisation_and_forced_rows():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.0]])
    r = route(logits, 2, norm_topk_prob=False)
    np.testing.assert_array_equal(np.asarray(r.experts), [[1, 3], [0, 3]])
    p = jax.nn.softmax(logits, -1)
    np.testing.assert_allclose(
        np.asarray(r.weights), np.asarray(jnp.take_along_axis(p, r.experts, -1)), rtol=1e-6
    )
    n = route(logits, 2, norm_topk_prob=True)
    np.testing.assert_allclose(np.asarray(n.weights.sum(-1)), [1.0, 1.0], rtol=1e-6)
    forced = Forced(jnp.asarray([[2, 0], [2, 0]]), jnp.asarray([True, False]))
    f = route(logits, 2, norm_topk_prob=True, forced=forced)
    np.testing.assert_array_equal(np.asarray(f.experts), [[2, 0], [0, 3]])  # row 1 keeps its own
    w = np.asarray(p)[0, [2, 0]]
    np.testing.assert_allclose(np.asarray(f.weights[0]), w / w.sum(), rtol=1e-6)  # current router's weights


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    hf_model, path = write_tiny("qwen3-moe", tmp_path_factory.mktemp("moe"))
    return hf_model, path


def test_balance_loss_equals_transformers_aux_loss(moe):
    hf_model, path = moe
    model = load_hf(path)
    ids, mask, pos = _batch(hf_model.config.vocab_size)
    with torch.no_grad():
        out = hf_model(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
            output_router_logits=True,
        )
    _, _, routes = model.hidden_routed(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    np.testing.assert_allclose(float(routes.balance_loss), float(out.aux_loss), rtol=1e-5)
    assert routes.experts.shape == (8, 12, len(model.cfg.moe_layers), 2)
    assert model.cfg.moe_layers == (0, 2)  # layer 1 is in mlp_only_layers


def test_fused_expert_layout_loads_the_same(moe, tmp_path):
    """transformers 5's in-memory layout (gate_up_proj [E, 2I, H], down_proj [E, H, I]), as some
    tools write it, reads into the same model as the released per-expert layout."""
    _, path = moe
    tensors = load_file(path / "model.safetensors")
    fused = {}
    for layer in (0, 2):
        pre = f"model.layers.{layer}.mlp.experts"
        experts = sorted({int(k.split(".")[5]) for k in tensors if k.startswith(pre + ".")})
        g = [tensors.pop(f"{pre}.{e}.gate_proj.weight") for e in experts]
        u = [tensors.pop(f"{pre}.{e}.up_proj.weight") for e in experts]
        d = [tensors.pop(f"{pre}.{e}.down_proj.weight") for e in experts]
        fused[f"{pre}.gate_up_proj"] = np.stack([np.concatenate([a, b]) for a, b in zip(g, u, strict=True)])
        fused[f"{pre}.down_proj"] = np.stack(d)
    out = tmp_path / "fused"
    out.mkdir()
    (out / "config.json").write_text((path / "config.json").read_text())
    save_file({**tensors, **fused}, out / "model.safetensors")
    a, b = load_hf(path), load_hf(out)
    for (pa, va), (pb, vb) in zip(
        nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True
    ):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(pa))
    # a per-expert checkpoint that lacks one expert's tensor is refused, naming it
    per_expert = load_file(path / "model.safetensors")
    del per_expert["model.layers.0.mlp.experts.3.up_proj.weight"]
    save_file(per_expert, out / "model.safetensors")
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.experts\.3\.up_proj"):
        load_hf(out)


def test_config_errors_name_the_field():
    base = dict(
        model_type="qwen3_moe",
        vocab_size=32,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=4,
        moe_intermediate_size=4,
        num_experts=4,
        num_experts_per_tok=2,
    )
    assert DecoderConfig.from_hf(base).moe_layers == (0, 1)
    assert DecoderConfig.from_hf({**base, "num_local_experts": 4, "num_experts": None}).num_experts == 4
    with pytest.raises(ValueError, match="num_experts_per_tok 5"):
        DecoderConfig.from_hf({**base, "num_experts_per_tok": 5})
    with pytest.raises(ValueError, match=r"mlp_only_layers \[7\]"):
        DecoderConfig.from_hf({**base, "mlp_only_layers": [7]})
    assert DecoderConfig.from_hf({**base, "output_router_logits": True}).router_aux_loss_coef == 0.001
    assert (
        DecoderConfig.from_hf(base).router_aux_loss_coef == 0.0
    )  # transformers adds it only with router logits


def _loss(model, ids, pos, mask):
    x, _, routes = model.hidden_routed(ids, pos, mask)
    lp = next_token_logprobs(model.logits(x), ids)
    m = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
    return -(lp * m).sum() / m.sum() + 0.01 * routes.balance_loss, (x, routes.experts)


def _run(model, *batch):
    (loss, aux), grads = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))(model, *batch)
    return loss, aux, nnx.to_flat_state(grads)


MESHES = [((1, 2, 1, 4), "rows"), ((2, 1, 2, 2), "rows"), ((1, 4, 2, 1), "weights"), ((1, 1, 1, 8), "rows")]


@pytest.mark.parametrize(
    "shape, dispatch, kernel",
    [
        *((s, d, "ragged_dot") for s, d in MESHES[:3]),
        pytest.param(*MESHES[3], "ragged_dot", marks=pytest.mark.slow),  # (default suite's time)
        ((1, 2, 1, 4), "weights", "ragged_dot"),
        pytest.param((1, 2, 2, 2), "xla", "ragged_dot", marks=pytest.mark.slow),
        (None, "none", "megablox"),
        (None, "none", "tiled"),
        ((1, 2, 1, 4), "rows", "tiled"),
        ((1, 4, 2, 1), "weights", "megablox"),
        ((2, 1, 2, 2), "rows", "megablox"),
    ],
)
def test_expert_parallel_forward_loss_and_grads_match_single_device(moe, shape, dispatch, kernel):
    """The model knows its mesh (as every stage sets it up) and each device routes its own rows:
    ``rows`` keeps experts local and gathers the expert group's rows, ``weights`` gathers the
    experts; ``xla``: the model does not know its mesh, XLA partitions the whole-batch dispatch.
    The reference: one device, XLA's ragged_dot; ``megablox`` runs the Pallas kernel (interpreted),
    ``tiled`` the plain-JAX one."""
    _, path = moe
    ids, mask, pos = _batch(256)
    ref_loss, (ref_x, ref_routes), ref_grads = _run(
        load_hf(path), *(jnp.asarray(a) for a in (ids, pos, mask))
    )
    if shape is None:  # one device, no mesh
        model = load_hf(path).use_attention("dense", interpret=True).use_experts(kernel)
        assert model.layers[0].mlp.kernel == kernel
        loss, (x, routes), grads = _run(model, *(jnp.asarray(a) for a in (ids, pos, mask)))
        _same(loss, x, routes, grads, ref_loss, ref_x, ref_routes, ref_grads)
        return
    mesh = make_mesh(shape)
    model = shard_model(load_hf(path), mesh)
    if dispatch != "xla":
        model.use_attention("dense", mesh, interpret=True).use_experts(kernel, dispatch)
    assert model.layers[0].mlp.kernel == kernel
    w = model.layers[0].mlp.experts.gate_proj[...]
    assert w.sharding.spec == spec_for("layers.0.mlp.experts.gate_proj", w.shape, "qwen3_moe", mesh)
    if shape[3] > 1:
        assert w.sharding.spec[0] == "expert"
        assert {s.data.shape[0] for s in w.addressable_shards} == {8 // shape[3]}  # each device: its experts
    batch = [jax.device_put(jnp.asarray(a), batch_sharding(mesh)) for a in (ids, pos, mask)]
    loss, (x, routes), grads = _run(model, *batch)
    _same(loss, x, routes, grads, ref_loss, ref_x, ref_routes, ref_grads)


def _same(loss, x, routes, grads, ref_loss, ref_x, ref_routes, ref_grads):
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(x), np.asarray(ref_x), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(routes), np.asarray(ref_routes))
    for (pa, ga), (pb, gb) in zip(grads, ref_grads, strict=True):
        assert pa == pb
        np.testing.assert_allclose(np.asarray(ga[...]), np.asarray(gb[...]), atol=2e-6, err_msg=str(pa))


def test_replaying_routes(moe):
    """Replaying the model's own routes changes nothing; replaying other routes changes exactly
    the replayed rows, and the router still gets a gradient through the gate weights."""
    _, path = moe
    model = load_hf(path)
    ids, mask, pos = (jnp.asarray(a) for a in _batch(256))
    run = nnx.jit(lambda m, routes, replay: m.hidden_routed(ids, pos, mask, routes=routes, replay=replay))
    x, _, own = nnx.jit(lambda m: m.hidden_routed(ids, pos, mask))(model)
    everywhere = jnp.ones(ids.shape, bool)
    same, _, r = run(model, own.experts, everywhere)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    other = (own.experts + 1) % model.cfg.num_experts  # distinct experts per token still
    rows = jnp.zeros(ids.shape, bool).at[3].set(True)
    y, _, r = run(model, other, rows)
    np.testing.assert_array_equal(np.asarray(r.experts[3, :, 0]), np.asarray(other[3, :, 0]))
    np.testing.assert_array_equal(np.asarray(y[:3]), np.asarray(x[:3]))  # causal rows of others untouched
    assert float(jnp.abs(y[3] - x[3]).max()) > 1e-3

    def f(m):
        return m.hidden_routed(ids, pos, mask, routes=other, replay=everywhere)[0].sum()

    g = nnx.jit(nnx.grad(f))(model)
    assert float(jnp.abs(g.layers[0].mlp.gate.kernel[...]).max()) > 0
