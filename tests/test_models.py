"""Model-level checks: parameter counts, shapes, gradients, and graph propagation by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.graph import normalized_bipartite_adjacency, propagate
from mirrorgrad_jax.models import BPRMF, VBPR, LightGCN, available_models, build_config, get_model
from helpers import random_batch


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=60, num_items=40, seed=0)


_batch = random_batch


def test_registry_and_config_errors():
    assert {"bprmf", "lightgcn", "vbpr"} <= set(available_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model("nope")
    with pytest.raises(ValueError, match=r"unknown vbpr option\(s\) \['reg'\]"):
        build_config(VBPR, {"reg": 1.0})


def test_vbpr_parameter_count_matches_card(tiny):
    d = 8
    model = VBPR(tiny, build_config(VBPR, {"embedding_size": d}), rngs=nnx.Rngs(0))
    feat_dim = sum(f.shape[1] for f in tiny.features.values())
    # Card: 2dU + dI + F*d + d.
    assert model.num_trainable_params() == 2 * d * tiny.num_users + d * tiny.num_items + feat_dim * d + d


@pytest.mark.parametrize("cls", [BPRMF, LightGCN, VBPR])
def test_shapes_gradients_and_loss_decrease(tiny, cls):
    model = cls(tiny, build_config(cls, {"embedding_size": 8}), rngs=nnx.Rngs(0))
    users = jnp.arange(5)
    assert model.scores(users).shape == (5, tiny.num_items)
    batch = _batch(tiny)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0))
    loss0, grads = jax.value_and_grad(loss_fn)(params)
    assert loss0.shape == ()
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0.0, f"no gradient reaches {path}"
    # Constants (features, graph) are not parameters.
    assert all(not isinstance(v, nnx.Param) for v in jax.tree.leaves(rest, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    p = params
    for _ in range(30):
        p = jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss_fn)(p))
    assert float(loss_fn(p)) < float(loss0)


def test_normalized_adjacency_and_propagation_by_hand():
    # 3 users, 4 items; train pairs (u, i): (0,0), (0,1), (1,1), (2,3), and a duplicate (0,0).
    train = np.array([[0, 0], [0, 1], [1, 1], [2, 3], [0, 0]])
    adj = normalized_bipartite_adjacency(train, 3, 4, eps=0.0)
    dense = np.zeros((7, 7))
    dense[adj.rows, adj.cols] = adj.values
    # Degrees (duplicates merged): users [2, 1, 1], items [1, 2, 0, 1] -> nodes 3..6.
    expected = np.zeros((7, 7))
    for u, i, du, di in [(0, 0, 2, 1), (0, 1, 2, 2), (1, 1, 1, 2), (2, 3, 1, 1)]:
        expected[u, 3 + i] = expected[3 + i, u] = 1 / np.sqrt(du * di)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 2)), jnp.float32)
    np.testing.assert_allclose(propagate(adj, x), expected @ np.asarray(x), rtol=1e-5, atol=1e-6)


def test_vbpr_without_features_is_refused():
    ds = make_synthetic(num_users=30, num_items=20, modalities={}, seed=1)
    with pytest.raises(ValueError, match="VBPR needs item features"):
        VBPR(ds, build_config(VBPR, {}), rngs=nnx.Rngs(0))


def test_vbpr_projection_variants_agree(tiny):
    batch = _batch(tiny)
    out = {}
    for projection in ("all_items", "batch_items"):
        model = VBPR(tiny, build_config(VBPR, {"embedding_size": 8, "projection": projection}), rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss_fn = lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0))
        out[projection] = jax.value_and_grad(loss_fn)(params)
        assert model.scores(jnp.arange(3)).shape == (3, tiny.num_items)
    (la, ga), (lb, gb) = out["all_items"], out["batch_items"]
    # Same maths, different float32 summation order: 1e-5 relative.
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="projection must be"):
        build_config(VBPR, {"projection": "some"})
