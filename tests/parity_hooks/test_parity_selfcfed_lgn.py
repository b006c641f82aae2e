"""SELFCFED_LGN's parity map and hooks (``benchmarks/parity_maps.py``), without torch or a reference checkout.

The parity check gives both sides one fixed sample for SELFCFED_LGN's two random draws (the
random-rate edge dropout and the targets' dropout). Checked here: the sample follows the
entries whatever order a side stores them in, our hook replaces both draws (the loss no
longer depends on the key, also through split / merge and jit, as in the trainer's steps),
and the map covers every parameter of ours.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


@pytest.fixture(scope="module")
def maps(parity_maps):
    return parity_maps


@pytest.fixture(scope="module")
def model_and_batch(maps):
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.data.synthetic import make_synthetic

    dataset = make_synthetic(40, 30, interactions_per_user=6.0, seed=1)
    pmap = maps.PARITY_MAPS["selfcfed_lgn"]
    cls = get_model("selfcfed_lgn")
    model = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=3))
    batch = jnp.asarray(dataset.train[:24].T, jnp.int32)
    return model, batch


def test_sample_follows_the_entries_in_any_order(maps):
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 50, 200), rng.integers(0, 50, 200)
    rows, cols = np.unique(np.stack([rows, cols], 1), axis=0).T
    rho, keep, keep_u, _keep_i = maps._c_selfcfed_sample(rows, cols, 8, 0.2)
    perm = rng.permutation(len(rows))
    rho2, keep2, keep_u2, _ = maps._c_selfcfed_sample(rows[perm], cols[perm], 8, 0.2)
    assert rho == rho2 and 0.05 <= rho <= 0.6
    np.testing.assert_array_equal(keep2, keep[perm])
    np.testing.assert_array_equal(keep_u2, keep_u)
    assert 0.0 < keep.mean() < 1.0 and keep_u.shape == (maps._C_MAX_BATCH, 8) and 0.7 < keep_u.mean() < 0.9


def test_our_hook_replaces_both_draws(maps, model_and_batch):
    model, batch = model_and_batch
    free = [float(model.loss(batch, jax.random.key(k))) for k in (1, 2)]
    assert free[0] != free[1]  # without the hook the key draws the dropout
    maps.selfcfed_fixed_sample_ours(model)
    fixed = [float(model.loss(batch, jax.random.key(k))) for k in (1, 2)]
    assert fixed[0] == fixed[1]
    # The sample is the one drawn for our entry order: dropped entries are 0, kept ones rescaled.
    rho, keep, keep_u, keep_i = maps._c_selfcfed_sample(model.adj_rows[...], model.adj_cols[...], model.config.embedding_size, model.config.dropout)
    values, got_rho = model.edge_dropout(jax.random.key(5))
    assert float(got_rho) == pytest.approx(rho)
    np.testing.assert_allclose(np.asarray(values), np.where(keep, np.asarray(model.adj_values[...]) / (1 - rho), 0.0), rtol=1e-6)
    u, i = model.target_keep_masks(jax.random.key(5), 24)
    np.testing.assert_array_equal(np.asarray(u), keep_u[:24])
    np.testing.assert_array_equal(np.asarray(i), keep_i[:24])
    # Kept through split / merge and jit, as the trainer's steps use the model.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    jitted = jax.jit(lambda p, key: nnx.merge(graphdef, p, rest, copy=True).loss(batch, key))
    assert float(jitted(params, jax.random.key(9))) == pytest.approx(fixed[0], rel=1e-6)


def test_map_covers_our_parameters(maps, model_and_batch):
    import parity

    model, _ = model_and_batch
    pmap = maps.PARITY_MAPS["selfcfed_lgn"]
    ours = {k: np.asarray(v) for k, v in parity._flat(nnx.state(model, nnx.Param)).items()}
    back = parity.apply_map(pmap, parity.invert_map(pmap, ours), parity.our_param_shapes(model))
    assert set(back) == set(ours)
    np.testing.assert_array_equal(back["predictor_w"], ours["predictor_w"])
