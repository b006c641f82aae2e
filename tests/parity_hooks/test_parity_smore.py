"""SMORE's parity hook (``benchmarks/parity_maps.py``), on our side only: no torch, no reference.

With dropout the check feeds SMORE's three preference-gate masks from the reference through
``smore_fixed_masks_ours`` (a Constant ``parity_gate_masks`` read by ``dropout_multipliers``
whatever the key). Checked (and undone afterwards): all-ones masks give the loss of
``dropout_rate = 0``, the key no longer matters, a zeroed mask changes the loss, and ranking
is untouched (eval mode: no dropout); other instances keep their random masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mirrorgrad_jax.models import build_config, get_model

from mirrorgrad_jax.data.synthetic import make_synthetic


def _smore(rate: float):
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("smore")
    settings = {"embedding_size": 8, "image_knn_k": 3, "text_knn_k": 3, "dropout_rate": rate, "reg_batch_size": 4}
    return cls(dataset, build_config(cls, settings), rngs=nnx.Rngs(params=0))


def test_smore_fixed_masks(parity_maps):
    batch = jnp.asarray(np.array([[0, 1, 2, 3], [0, 4, 5, 6], [7, 8, 9, 10]]))
    plain = _smore(0.0)
    expected = float(plain.loss(batch, jax.random.key(0)))
    model = _smore(0.1)
    parity_maps.smore_fixed_masks_ours(model)
    model.parity_gate_masks[...] = jnp.ones_like(model.parity_gate_masks[...])
    losses = [float(model.loss(batch, jax.random.key(k))) for k in (1, 2)]
    assert losses[0] == losses[1] == pytest.approx(expected, rel=1e-6)
    model.parity_gate_masks[...] = model.parity_gate_masks[...].at[2].set(0.0)
    assert float(model.loss(batch, jax.random.key(1))) != pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(np.asarray(model.scores(jnp.arange(3))), np.asarray(plain.scores(jnp.arange(3))), rtol=1e-5)
    # Only the hooked instance changed: another one still draws its masks from the key.
    other = _smore(0.1)
    assert float(other.loss(batch, jax.random.key(1))) != float(other.loss(batch, jax.random.key(2)))
