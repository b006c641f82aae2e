"""The LATTICE / MGCN graph helpers of ``mirrorgrad_jax.graph`` against dense numpy / JAX.

Float32 results are compared with float64 numpy references at ``atol = rtol = 1e-5`` (a
few float32 ulps on O(1) values); gradients of two float32 computations of the same
function at ``rtol = 1e-4`` / ``atol = 1e-6``; neighbour ids exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirrorgrad_jax.graph import (
    knn_topk_cosine,
    learnable_knn_cosine,
    self_loop_row_normalized_adjacency,
    summed_bipartite_adjacency,
)

TOL = dict(atol=1e-5, rtol=1e-5)
# 4 users (user 3 has no train item) x 4 items; (1, 2) appears twice: its value counts twice.
U, I = 4, 4
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [1, 2], [0, 3]])


def _dense(adj):
    mat = np.zeros((adj.num_nodes,) * 2)
    np.add.at(mat, (np.asarray(adj.rows), np.asarray(adj.cols)), np.asarray(adj.values, np.float64))
    return mat


def _summed_matrix():
    a = np.zeros((U + I,) * 2)
    for u, i in TRAIN:
        a[u, U + i] += 1.0
        a[U + i, u] += 1.0
    return a


def _check_sorted_and_distinct(adj):
    keys = np.asarray(adj.rows, np.int64) * adj.num_nodes + np.asarray(adj.cols)
    assert np.all(np.diff(keys) > 0)


def test_self_loop_row_normalized_adjacency_by_hand():
    adj = self_loop_row_normalized_adjacency(TRAIN, U, I)
    _check_sorted_and_distinct(adj)
    a = _summed_matrix() + np.eye(U + I)
    expected = a / a.sum(1, keepdims=True)
    np.testing.assert_allclose(_dense(adj), expected, **TOL)
    np.testing.assert_allclose(_dense(adj).sum(1), 1.0, **TOL)  # row-stochastic, not symmetric
    assert _dense(adj)[1, U + 2] == pytest.approx(2 / 4)  # the repeated pair: 2 / (summed degree 3 + 1)
    assert _dense(adj)[3, 3] == 1.0  # a user without items keeps only its self-loop
    assert len(adj.rows) == 2 * 6 + U + I


def test_summed_bipartite_adjacency_by_hand():
    adj = summed_bipartite_adjacency(TRAIN, U, I)
    _check_sorted_and_distinct(adj)
    a = _summed_matrix()
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)  # 0-degree -> 0, no eps
    expected = a * inv[:, None] * inv[None, :]
    np.testing.assert_allclose(_dense(adj), expected, **TOL)
    assert np.all(np.isfinite(np.asarray(adj.values)))
    assert _dense(adj)[1, U + 2] == pytest.approx(2 / np.sqrt(3 * 2))  # value 2, summed degrees 3 and 2
    # The user rows come first: they are the U x I block R_n.
    user_part = np.asarray(adj.rows) < U
    assert np.all(user_part[: user_part.sum()])
    r_n = np.zeros((U, I))
    np.add.at(r_n, (adj.rows[user_part], adj.cols[user_part] - U), adj.values[user_part])
    np.testing.assert_allclose(r_n, expected[:U, U:], **TOL)


def test_learnable_knn_cosine_matches_the_dense_top_k_and_its_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(13, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(13, 3)), jnp.float32)
    k, chunk = 3, 4  # 13 rows in 4 blocks of 4, the last one padded

    idx, val = jax.jit(lambda x: learnable_knn_cosine(x, k, chunk_size=chunk))(x)
    ref_idx, ref_val = knn_topk_cosine(x, k, chunk_size=chunk)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, **TOL)

    def dense_objective(x):
        n = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        values, _ = jax.lax.top_k(n @ n.T, k)  # torch's gradient: through the kept values only
        return jnp.sum(weights * values)

    def lists_objective(x):
        return jnp.sum(weights * learnable_knn_cosine(x, k, chunk_size=chunk)[1])

    np.testing.assert_allclose(jax.jit(jax.grad(lists_objective))(x), jax.jit(jax.grad(dense_objective))(x), rtol=1e-4, atol=1e-6)


def test_learnable_knn_cosine_zero_row_has_cosine_zero_and_a_finite_gradient():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32).at[2].set(0.0)
    idx, val = learnable_knn_cosine(x, 2, chunk_size=8)
    assert np.all(np.isfinite(np.asarray(val)))
    assert np.all(np.asarray(val)[2] == 0.0)
    grad = jax.grad(lambda x: jnp.sum(learnable_knn_cosine(x, 2)[1]))(x)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_learnable_knn_cosine_keeps_float64_features_in_float64_and_float32_ones_in_float32():
    """With x64 on (the parity check runs our side so), float64 features give float64 cosines
    equal to numpy's float64 ones to 1e-13 (rounding); float32 features stay float32 (training)."""
    x = np.random.default_rng(3).normal(size=(30, 5))
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    with jax.enable_x64(True):
        idx, val = learnable_knn_cosine(jnp.asarray(x, jnp.float64), 4)
        assert val.dtype == jnp.float64
        expected = np.take_along_axis(normed @ normed.T, np.asarray(idx), axis=1)
        np.testing.assert_allclose(np.asarray(val), expected, rtol=0, atol=1e-13)
        assert learnable_knn_cosine(jnp.asarray(x, jnp.float32), 4)[1].dtype == jnp.float32
