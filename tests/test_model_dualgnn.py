"""DualGNN: parameter count, gradients, training, a dense hand-check, quirks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.graph import build_user_graph
from mirrorgrad_jax.models.dualgnn import DualGNN, DualGNNConfig
from helpers import check_stale_eval, random_batch
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
    train_pairs = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [2, 0], [2, 1]])
    user_graph = {0: ([2, 1], [2.0, 1.0]), 1: ([0], [1.0]), 2: ([], [])}
    return RecDataset(
        name="hand",
        num_users=3,
        num_items=4,
        train=train_pairs,
        valid=np.array([[0, 2]]),
        test=np.array([[1, 3]]),
        features={"image": rng.normal(size=(4, 5)), "text": rng.normal(size=(4, 3))},
        user_graph=user_graph,
    )


_batch = random_batch


def _model(ds, **overrides):
    return DualGNN(ds, DualGNNConfig(embedding_size=D, **overrides), rngs=nnx.Rngs(0))


def test_parameter_count_matches_card(tiny):
    model = _model(tiny)
    u, i, d = tiny.num_users, tiny.num_items, D
    # The reference's count: sum_m (dU + 4d*F_m + 4d + 4d*d + d) + 2U + 2I, without the never-used
    # MLP_v, MLP_t (2 d^2) and MLP_user (3d*d + d) the reference also registers.
    per_modality = sum(d * u + 4 * d * f.shape[1] + 4 * d + 4 * d * d + d for f in tiny.features.values())
    assert model.num_trainable_params() == per_modality + 2 * u + 2 * i


def _dense_reference(model, ds, user_fusion, aggr_mode):
    """The whole DualGNN forward in float64 numpy with dense matrices."""
    u, n = ds.num_users, ds.num_users + ds.num_items
    adj = np.zeros((n, n))
    for user, item in ds.train:
        adj[user, u + item] = adj[u + item, user] = 1.0
    deg = adj.sum(1)
    if aggr_mode == "add":
        prop = adj / np.sqrt(np.outer(deg, deg))
    else:
        prop = adj / np.maximum(deg, 1)[:, None]
    reps = []
    for m in ("image", "text"):
        gcn = getattr(model, f"gcn_{m}")
        p = {k: np.asarray(getattr(gcn, k)[...], np.float64) for k in ("pref", "mlp_w", "mlp_b", "mlp1_w", "mlp1_b")}
        hidden = ds.features[m].astype(np.float64) @ p["mlp_w"] + p["mlp_b"]
        hidden = np.where(hidden > 0, hidden, 0.01 * hidden)
        x = np.concatenate([p["pref"], hidden @ p["mlp1_w"] + p["mlp1_b"]])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        h = prop @ x
        reps.append(x + h + prop @ h)
    v, t = reps
    w = np.asarray(model.weight_u[...], np.float64)[:, :, 0]
    v_users = v[:u] + t[:u] if user_fusion == "aliased" else v[:u]
    user = w[:, :1] * v_users + w[:, 1:] * t[:u]
    graph = np.zeros((u, u))
    for a in range(u):
        for b, weight in zip(np.asarray(model.user_nbr_idx[...][a]), np.asarray(model.user_nbr_weights[...][a])):
            graph[a, b] += weight
    user = user + graph @ user
    return np.concatenate([user, v[u:] + t[u:]])


@pytest.mark.parametrize("user_fusion", ["aliased", "weighted_sum"])
@pytest.mark.parametrize("aggr_mode", ["add", "mean"])
def test_forward_matches_dense_numpy_on_a_3x4_graph(hand, user_fusion, aggr_mode):
    model = _model(hand, user_fusion=user_fusion, aggr_mode=aggr_mode, num_user_neighbours=3, stale_eval=False)
    model.pre_epoch(np.random.default_rng(5))
    # The given user graph is used (not rebuilt from train): user 0 -> [2, 1], user 1 pads
    # [0] to [0, 0, 0], user 2 has no neighbours (ids 0, weights 0).
    idx, weights = np.asarray(model.user_nbr_idx[...]), np.asarray(model.user_nbr_weights[...])
    assert idx[0, :2].tolist() == [2, 1] and idx[1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(weights[1], 1 / 3, rtol=1e-6)
    assert idx[2].tolist() == [0, 0, 0] and weights[2].tolist() == [0, 0, 0]
    expected = _dense_reference(model, hand, user_fusion, aggr_mode)
    np.testing.assert_allclose(np.asarray(_representation(model)), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        np.asarray(_scores(model, jnp.arange(3))), expected[:3] @ expected[3:].T, rtol=RTOL, atol=ATOL
    )


def test_aliased_fusion_adds_w0_t_to_the_users(hand):
    """aliased - weighted_sum = (I + S) (w0 * t_u): the in-place add leaks t into v's share."""
    aliased = _model(hand, stale_eval=False)
    plain = _model(hand, user_fusion="weighted_sum", stale_eval=False)
    diff = np.asarray(_representation(aliased) - _representation(plain))
    assert np.allclose(diff[3:], 0.0)  # items are v + t either way
    assert np.abs(diff[:3]).max() > 1e-3


def test_stale_eval_ranks_with_the_last_training_forward(tiny):
    check_stale_eval(_model, tiny, "gcn_image")


def test_stale_cache_is_zero_before_training(tiny):
    model = _model(tiny)
    assert np.all(np.asarray(_scores(model, jnp.arange(3))) == 0.0)


def test_pre_epoch_resamples_user_graph_with_fixed_shapes(tiny):
    model = _model(tiny, num_user_neighbours=40)
    idx0, w0 = np.asarray(model.user_nbr_idx[...]), np.asarray(model.user_nbr_weights[...])
    model.pre_epoch(np.random.default_rng(1))
    idx1, w1 = np.asarray(model.user_nbr_idx[...]), np.asarray(model.user_nbr_weights[...])
    assert idx1.shape == idx0.shape == w0.shape == w1.shape == (tiny.num_users, 40)
    assert idx1.dtype == np.int32 and w1.dtype == np.float32
    assert not np.array_equal(idx0, idx1)  # padding of short neighbour lists is re-drawn
    sums = w1.sum(1)
    assert np.allclose(sums[sums > 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("ties", ["lowest_id", "torch_cpu"])
def test_user_graph_ties_option_reaches_the_built_graph(tiny, ties):
    """``user_graph_ties`` picks the order of the lists the model packs (the first 40 it samples from)."""
    model = _model(tiny, user_graph_ties=ties)
    built = build_user_graph(tiny.train, tiny.num_users, ties=ties)
    packed = model._user_sampler.packed
    for user in range(tiny.num_users):
        n = int(packed.lengths[user])
        np.testing.assert_array_equal(packed.idx[user, :n], built[user][0][:40])
    other = build_user_graph(tiny.train, tiny.num_users, ties="torch_cpu" if ties == "lowest_id" else "lowest_id")
    assert any(not np.array_equal(packed.idx[u, : int(packed.lengths[u])], other[u][0][:40]) for u in range(tiny.num_users))


def test_fusion_weights_start_as_a_softmax(tiny):
    w = np.asarray(_model(tiny).weight_u[...])
    assert w.shape == (tiny.num_users, 2, 1)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert np.abs(w - 0.5).max() < 0.2
