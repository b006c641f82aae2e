"""BM3's parity hook (``benchmarks/parity_maps.py``), on our side only: no torch, no reference.

The step-level check feeds BM3 the reference's FIXED target-dropout keep masks through
``bm3_ours_hook`` (Constants ``parity_keep_*`` and a ``_keep_masks`` that gathers them).
Checked here: the hooked model keeps its parameters, all-ones masks give the loss of
``dropout = 0`` (cosines ignore the ``1 / (1 - p)`` scale), an all-zero mask on one role
changes it, and masks drawn for the full tables are gathered by the batch's ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mirrorgrad_jax.models import build_config, get_model

from mirrorgrad_jax.data.synthetic import make_synthetic


def _bm3(dropout: float):
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("bm3")
    return cls(dataset, build_config(cls, {"embedding_size": 8, "dropout": dropout}), rngs=nnx.Rngs(params=0))


def _loss(model, batch):
    return float(nnx.jit(lambda m, b: m.loss(b, jax.random.key(0)))(model, batch))


def _set(model, role, value):
    var = getattr(model, f"parity_keep_{role}")
    var[...] = jnp.full(var[...].shape, value, var[...].dtype)


def test_bm3_fixed_masks(parity_maps):
    batch = jnp.asarray(np.array([[0, 1, 2, 3, 3], [0, 4, 5, 6, 6]]))
    reference = _loss(_bm3(0.0), batch)
    model = _bm3(0.3)
    params_before = nnx.state(model, nnx.Param)
    parity_maps.bm3_ours_hook(model)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params_before, nnx.state(model, nnx.Param)))
    for role in ("users", "items", "text", "image"):
        _set(model, role, 1.0)
    assert _loss(model, batch) == pytest.approx(reference, rel=1e-6)
    _set(model, "items", 0.0)  # every item target is 0: the terms against i_tg lose their cosine
    assert abs(_loss(model, batch) - reference) > 1e-3
    # Rows are gathered by id: a mask that keeps only user 3's row changes user 3's term alone.
    _set(model, "items", 1.0)
    keep = np.zeros(model.parity_keep_users[...].shape)
    keep[3] = 1.0
    model.parity_keep_users[...] = jnp.asarray(keep, model.parity_keep_users[...].dtype)
    masks = model._keep_masks(jax.random.key(0), batch[0], batch[1])
    assert np.asarray(masks[0]).all(axis=1).tolist() == [False, False, False, True, True]
    assert all(bool(np.asarray(m).all()) for m in masks[1:])
