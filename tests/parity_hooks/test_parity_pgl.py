"""PGL's parity hooks (``benchmarks/parity_maps.py``), on our side only: no torch.

``pgl_ours_hook`` recomputes our binary kNN lists' values in float64 (``w / (k + 1e-7)`` in the
image slots, ``(1 - w) / (k + 1e-7)`` in the text slots), as the reference's process computes
them. Checked: the values are the float32 ones widened (same layout), the loss moves by no more
than float32 rounding, and a list that is not laid out that way is refused.
With dropout, ``pgl_fixed_masks_ours`` makes the module's ``_dropout`` multiply by the exported
masks inside the hooked instance's loss only (all ones: the loss of ``dropout = 0``, whatever the key).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mirrorgrad_jax.models import build_config, get_model
from mirrorgrad_jax.models.interface import Constant

from mirrorgrad_jax.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def benchmarks(parity_maps, parity):
    return parity_maps, parity


def _pgl():
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("pgl")
    return cls(dataset, build_config(cls, {"embedding_size": 8, "knn_k": 4, "reg_weight": 0.0}), rngs=nnx.Rngs(params=0))


def test_pgl_ours_hook_widens_the_knn_values(benchmarks):
    parity_maps, _ = benchmarks
    batch = jnp.asarray(np.array([[0, 1, 2, 3], [0, 4, 5, 6], [7, 8, 9, 10]]))
    with jax.enable_x64(True):  # as the harness runs our side
        model = _pgl()
        before = np.asarray(model.mm_val[...])
        loss_before = float(model.loss(batch, jax.random.key(0)))
        parity_maps.pgl_ours_hook(model)
        after = np.asarray(model.mm_val[...])
        assert after.dtype == np.float64 and after.shape == before.shape
        np.testing.assert_allclose(after, before, rtol=1e-6)
        np.testing.assert_allclose(after[:, :4], 0.1 / (4 + 1e-7), rtol=1e-15)
        np.testing.assert_allclose(after[:, 4:], 0.9 / (4 + 1e-7), rtol=1e-15)
        assert float(model.loss(batch, jax.random.key(0))) == pytest.approx(loss_before, rel=1e-5)
    swapped = _pgl()
    swapped.mm_val = Constant(swapped.mm_val[...][:, ::-1])
    with pytest.raises(AssertionError, match="image slots, text slots"):
        parity_maps.pgl_ours_hook(swapped)


def test_pgl_fixed_masks(benchmarks):
    parity_maps, _ = benchmarks
    batch = jnp.asarray(np.array([[0, 1, 2, 3], [0, 4, 5, 6], [7, 8, 9, 10]]))
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("pgl")

    def build(dropout):
        return cls(dataset, build_config(cls, {"embedding_size": 8, "knn_k": 4, "reg_weight": 0.5, "dropout": dropout}), rngs=nnx.Rngs(params=0))

    with jax.enable_x64(True):
        plain = build(0.0)
        parity_maps.pgl_ours_hook(plain)
        expected = float(plain.loss(batch, jax.random.key(0)))
        model = build(0.2)
        module = sys.modules[cls.__module__]
        original = module._dropout
        parity_maps.pgl_fixed_masks_ours(model)
        model.parity_cl_masks[...] = jnp.ones_like(model.parity_cl_masks[...])
        losses = [float(model.loss(batch, jax.random.key(k))) for k in (1, 2)]
        assert losses[0] == losses[1] == pytest.approx(expected, rel=1e-12)
        model.parity_cl_masks[...] = model.parity_cl_masks[...].at[0, :, :4].set(0.0)
        assert float(model.loss(batch, jax.random.key(1))) != pytest.approx(expected, rel=1e-9)
        # Only the hooked instance changed.
        assert module._dropout is original
        other = build(0.2)
        assert float(other.loss(batch, jax.random.key(1))) != float(other.loss(batch, jax.random.key(2)))
