"""Each process builds only its devices' rows of a global batch (``eigen_jax.feed``); the
assembled batch equals the whole host batch placed on the mesh. The two-process runs in
test_multihost.py show the same batches across real processes."""

import jax
import numpy as np
import pytest

from eigen_jax.feed import feed, local_rows, row_slices, take, trim_padding
from eigen_jax.model.sharding import batch_sharding, make_mesh


def _batch(n: int, t: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    attn = np.zeros((n, t), np.int32)
    for r, k in enumerate(rng.integers(5, 140, size=n)):
        attn[r, :k] = 1
    return {
        "tokens": rng.integers(0, 50, size=(n, t)).astype(np.int32),
        "attn_mask": attn,
        "advantages": rng.normal(size=n).astype(np.float32),
    }


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (1, 8, 1), (1, 1, 1)])
def test_a_fed_batch_equals_the_whole_batch_placed_on_the_mesh(shape):
    # (1, 1, 1): one device holds the unsplit batch (its index is slice(None): every row)
    mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
    whole = _batch(16)
    asked = []

    def build(rows):
        asked.append(rows)
        return take(whole)(rows)

    fed = feed(mesh, 16, build, trim=128)
    assert len(asked) == 1 and list(asked[0]) == list(range(16))  # one process holds every row
    want = trim_padding(whole, 128)
    for key, value in want.items():
        assert fed[key].sharding.is_equivalent_to(batch_sharding(mesh, value.ndim), value.ndim)
        np.testing.assert_array_equal(np.asarray(fed[key]), value, err_msg=key)
    assert fed["tokens"].shape == (16, 256)


def test_a_process_builds_exactly_the_rows_its_devices_hold():
    """Half the devices (as one of two processes would own them): their rows and no others, once
    each though the tensor axis holds every row twice."""
    mesh = make_mesh((2, 2, 2))
    sharding = batch_sharding(mesh, 1)
    index = sharding.devices_indices_map((16,))
    mine = list(mesh.devices[0].flat)  # data row 0: 4 devices, 2 distinct row slices
    rows = local_rows(row_slices(index, mine, 16))
    assert list(rows) == list(range(8))
    other = list(mesh.devices[1].flat)
    assert list(local_rows(row_slices(index, other, 16))) == list(range(8, 16))
    every = row_slices(index, jax.devices(), 16)
    assert sorted(len(s) for s in every.values()) == [4] * 8


def test_feeding_refuses_batches_that_do_not_split_or_builds_that_miscount():
    mesh = make_mesh((1, 8, 1))
    with pytest.raises(ValueError, match="does not split over the mesh's data x fsdp x expert = 8"):
        feed(mesh, 12, take(_batch(12)))
    with pytest.raises(ValueError, match="build gave 4 rows of 'tokens' for 8 row indices"):
        feed(mesh, 8, lambda rows: {"tokens": np.zeros((4, 3), np.int32)})


def test_without_a_mesh_the_whole_batch_is_built_and_trimmed():
    whole = _batch(4)
    fed = feed(None, 4, take(whole), trim=128)
    np.testing.assert_array_equal(np.asarray(fed["attn_mask"]), trim_padding(whole)["attn_mask"])
