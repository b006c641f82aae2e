"""DRAGON: parameter count, gradients, training, a dense hand-check, quirks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.models.dragon import DRAGON, DRAGONConfig
from helpers import check_stale_eval, random_batch
from helpers import grads_constants_fixed as _grads
from helpers import jit_representation as _representation
from helpers import jit_scores as _scores

D = 8  # small latent size for the tiny tests
# float32 forward vs float64 numpy: a handful of ulps on O(1) values.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=60, num_items=40, seed=0)


@pytest.fixture(scope="module")
def hand():
    """3 users, 4 items, a given (deliberately not co-occurrence-derived) user graph."""
    rng = np.random.default_rng(3)
    return RecDataset(
        name="hand",
        num_users=3,
        num_items=4,
        train=np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [2, 0], [2, 1]]),
        valid=np.array([[0, 2]]),
        test=np.array([[1, 3]]),
        features={"image": rng.normal(size=(4, 5)), "text": rng.normal(size=(4, 3))},
        user_graph={0: ([2, 1], [2.0, 1.0]), 1: ([0], [1.0]), 2: ([], [])},
    )


_batch = random_batch


def _model(ds, **overrides):
    overrides.setdefault("embedding_size", D)
    return DRAGON(ds, DRAGONConfig(**overrides), rngs=nnx.Rngs(0))


def test_parameter_count_matches_card(tiny):
    model = _model(tiny)
    u, d = tiny.num_users, D
    # The reference's count: sum_m (dU + 4d*F_m + 4d + 4d*d + d) + 2U (weight_u); the reference's never-used
    # image/text embeddings, *_trs, MLP_v/MLP_t/MLP_user and weight_i are not created.
    per_modality = sum(d * u + 4 * d * f.shape[1] + 4 * d + 4 * d * d + d for f in tiny.features.values())
    assert model.num_trainable_params() == per_modality + 2 * u


def _dense_knn(features, k):
    """K_bin: top-k cosine pattern (self included), every value 1 / (k + 1e-7)."""
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = normed @ normed.T
    dense = np.zeros_like(sim)
    for i, row in enumerate(sim):
        dense[i, np.argsort(-row)[:k]] = 1.0
    return dense / (k + 1e-7)


def _dense_reference(model, ds, k, image_weight, layers):
    """The whole DRAGON forward in float64 numpy with dense matrices."""
    u, n = ds.num_users, ds.num_users + ds.num_items
    adj = np.zeros((n, n))
    for user, item in ds.train:
        adj[user, u + item] = adj[u + item, user] = 1.0
    deg = adj.sum(1)
    prop = adj / np.sqrt(np.outer(deg, deg))
    reps = []
    for m in ("image", "text"):
        gcn = getattr(model, f"gcn_{m}")
        p = {k_: np.asarray(getattr(gcn, k_)[...], np.float64) for k_ in ("pref", "mlp_w", "mlp_b", "mlp1_w", "mlp1_b")}
        hidden = ds.features[m].astype(np.float64) @ p["mlp_w"] + p["mlp_b"]
        hidden = np.where(hidden > 0, hidden, 0.01 * hidden)
        x = np.concatenate([p["pref"], hidden @ p["mlp1_w"] + p["mlp1_b"]])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        h = prop @ x
        reps.append(x + h + prop @ h)
    v, t = reps
    w = np.asarray(model.weight_u[...], np.float64)[:, :, 0]
    user = np.concatenate([w[:, :1] * v[:u], w[:, 1:] * t[:u]], axis=1)
    graph = np.zeros((u, u))
    for a in range(u):
        for b, weight in zip(np.asarray(model.user_nbr_idx[...][a]), np.asarray(model.user_nbr_weights[...][a])):
            graph[a, b] += weight
    user = user + graph @ user
    mm_adj = image_weight * _dense_knn(ds.features["image"].astype(np.float64), k)
    mm_adj += (1 - image_weight) * _dense_knn(ds.features["text"].astype(np.float64), k)
    item = np.concatenate([v[u:], t[u:]], axis=1)
    item = item + np.linalg.matrix_power(mm_adj, layers) @ item
    return np.concatenate([user, item])


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_matches_dense_numpy_on_a_3x4_graph(hand, layers):
    model = _model(hand, knn_k=2, n_mm_layers=layers, num_user_neighbours=3)
    model.pre_epoch(np.random.default_rng(5))
    # The given user graph is used (not rebuilt from train).
    assert np.asarray(model.user_nbr_idx[...])[0, :2].tolist() == [2, 1]
    assert np.asarray(model.user_nbr_weights[...])[2].tolist() == [0, 0, 0]
    expected = _dense_reference(model, hand, k=2, image_weight=0.1, layers=layers)
    np.testing.assert_allclose(np.asarray(_representation(model)), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        np.asarray(_scores(model, jnp.arange(3))), expected[:3] @ expected[3:].T, rtol=RTOL, atol=ATOL
    )


def test_mm_adj_is_a_row_stochastic_mix_of_two_knn_graphs(tiny):
    model = _model(tiny)  # knn_k = 10, mm_image_weight = 0.1
    idx, val = np.asarray(model.mm_idx[...]), np.asarray(model.mm_val[...])
    assert idx.shape == val.shape == (tiny.num_items, 20)
    np.testing.assert_allclose(val[:, :10], 0.1 / (10 + 1e-7), rtol=1e-6)
    np.testing.assert_allclose(val[:, 10:], 0.9 / (10 + 1e-7), rtol=1e-6)
    assert np.all(idx[:, 0] == np.arange(tiny.num_items))  # each item is its own nearest neighbour
    np.testing.assert_allclose(val.sum(1), 1.0, rtol=1e-5)


def test_frozen_graphs_do_not_change_when_parameters_are_updated(tiny):
    model = _model(tiny)
    frozen = {name: np.asarray(getattr(model, name)[...]) for name in ("mm_idx", "mm_val", "senders", "receivers", "edge_norm")}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(tiny)
    for _ in range(3):
        params = jax.tree.map(lambda a, g: a - 0.1 * g, params, _grads(graphdef, params, rest, batch))
    nnx.update(model, params)
    assert not np.allclose(np.asarray(model.weight_u[...]), np.asarray(_model(tiny).weight_u[...]))
    for name, value in frozen.items():
        np.testing.assert_array_equal(np.asarray(getattr(model, name)[...]), value, err_msg=name)


def test_eval_recomputes_by_default_and_stale_eval_uses_the_training_cache(tiny):
    check_stale_eval(_model, tiny, "gcn_text")


def test_single_modality_uses_its_own_representation_and_knn_graph(tiny):
    text_only = RecDataset(
        name="text_only", num_users=tiny.num_users, num_items=tiny.num_items, train=tiny.train, valid=tiny.valid,
        test=tiny.test, features={"text": tiny.features["text"]},
    )
    model = _model(text_only)
    assert model.mm_idx.shape == (tiny.num_items, 10)  # the text K_bin alone, weight 1
    # Shapes only (no compile): representation has d columns, the loss is a scalar.
    assert jax.eval_shape(model.representation).shape == (tiny.num_users + tiny.num_items, D)
    assert jax.eval_shape(lambda: model.loss(_batch(tiny), jax.random.key(0))).shape == ()


def test_pre_epoch_keeps_shapes(tiny):
    model = _model(tiny)
    shapes = (model.user_nbr_idx.shape, model.user_nbr_weights.shape)
    model.pre_epoch(np.random.default_rng(1))
    assert (model.user_nbr_idx.shape, model.user_nbr_weights.shape) == shapes == ((60, 40), (60, 40))
