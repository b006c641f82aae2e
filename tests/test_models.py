"""Model-level checks: parameter counts, shapes, gradients, and graph propagation by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.graph import normalized_bipartite_adjacency, propagate
from mirrorgrad_jax.models import VBPR, available_models, build_config, get_model
from mirrorgrad_jax.models.vbpr import project_distinct
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
    # The reference's count: 2dU + dI + F*d + d.
    assert model.num_trainable_params() == 2 * d * tiny.num_users + d * tiny.num_items + feat_dim * d + d


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


def test_vbpr_projection_variants_agree(tiny):
    batch = _batch(tiny)
    out = {}
    for projection in ("all_items", "batch_items", "distinct_items"):
        model = VBPR(tiny, build_config(VBPR, {"embedding_size": 8, "projection": projection}), rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss_fn = lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0))
        out[projection] = jax.value_and_grad(loss_fn)(params)
        assert model.scores(jnp.arange(3)).shape == (3, tiny.num_items)
    (la, ga), (lb, gb), (lc, gc) = out["all_items"], out["batch_items"], out["distinct_items"]
    # Same maths, different float32 summation order: 1e-5 relative.
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # distinct_items computes the very same item vectors as batch_items.
    assert np.asarray(lc) == np.asarray(lb)
    for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="projection must be"):
        build_config(VBPR, {"projection": "some"})


@pytest.mark.parametrize("pool, capacity", [(40, 48), (400, 48)])
def test_project_distinct_equals_projecting_every_row(pool, capacity):
    # pool 40: at most 40 distinct ids, the distinct path; pool 400: ~56 distinct ids among
    # 64 rows, more than the capacity, so the lax.cond takes the every-row path.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((500, 300), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((300, 8), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal(8, dtype=np.float32))
    items = jnp.asarray(rng.integers(0, pool, 64).astype(np.int32))
    distinct = jax.jit(lambda w, b: project_distinct(x, items, w, b, capacity))
    every = jax.jit(lambda w, b: x[items] @ w + b)
    # The forward rows are the same dot products, summed in the same order: bit-equal.
    np.testing.assert_array_equal(distinct(w, b), every(w, b))
    loss = lambda f: jax.grad(lambda w, b: jnp.sum(jnp.sin(f(w, b))), argnums=(0, 1))(w, b)
    # d/dW: a repeated id's rows are summed before the matmul instead of inside it, so the
    # float32 sums are associated differently (observed <= 1e-6 of the largest entry).
    for got, want in zip(loss(distinct), loss(every)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def _gradients(project, x, w, c, argnums):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(project(x, w)) * c), argnums=argnums))(x, w)


@pytest.mark.parametrize("rows, width", [(300, 256), (300, 40)])
def test_dense_matches_the_plain_product_and_its_gradients(rows, width):
    from mirrorgrad_jax.models import dense
    from mirrorgrad_jax.models.kernels import DENSE_MIN_WIDTH

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((rows, width), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((width, 16), dtype=np.float32) / np.sqrt(width))
    c = jnp.asarray(rng.standard_normal((rows, 16), dtype=np.float32))
    # Forward: the very same product.
    np.testing.assert_array_equal(jax.jit(dense)(x, w), jax.jit(jnp.matmul)(x, w))
    # Wide inputs go through the custom backward pass, narrow ones do not.
    wide = width >= DENSE_MIN_WIDTH
    assert ("custom_vjp" in str(jax.make_jaxpr(dense)(x, w))) == wide
    got = _gradients(dense, x, w, c, (0, 1))
    want = _gradients(jnp.matmul, x, w, c, (0, 1))
    # The same sums of products; XLA may order them differently in the two layouts, so
    # float32 rounding (observed 0 on the CPU; 1e-5 of the largest entry allowed).
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(h))))


def test_dense_supports_forward_over_reverse_and_vmap():
    # The flatness toolkit's Hessian-vector products run jax.jvp over jax.grad.
    from mirrorgrad_jax.models import dense

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((50, 200), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((200, 4), dtype=np.float32) * 0.05)
    v = jnp.asarray(rng.standard_normal((200, 4), dtype=np.float32))

    def hvp(project):
        loss = lambda w: jnp.sum(jnp.tanh(project(x, w)) ** 2)
        return jax.jvp(jax.grad(loss), (w,), (v,))[1]

    want = hvp(jnp.matmul)
    np.testing.assert_allclose(hvp(dense), want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))
    stacked = jnp.stack([w, 2 * w])
    np.testing.assert_allclose(jax.vmap(lambda w: dense(x, w))(stacked), jax.vmap(lambda w: x @ w)(stacked), rtol=1e-6)


@pytest.mark.parametrize("rows", [300, 40])
def test_pairwise_scores_matches_the_plain_product_and_its_gradients(rows):
    from mirrorgrad_jax.models import pairwise_scores
    from mirrorgrad_jax.models.kernels import DENSE_MIN_WIDTH

    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.standard_normal((rows, 24), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((rows, 24), dtype=np.float32))
    c = jnp.asarray(rng.standard_normal((rows, rows), dtype=np.float32))
    plain = lambda a, b: a @ b.T  # noqa: E731
    np.testing.assert_array_equal(jax.jit(pairwise_scores)(a, b), jax.jit(plain)(a, b))
    assert ("custom_vjp" in str(jax.make_jaxpr(pairwise_scores)(a, b))) == (rows >= DENSE_MIN_WIDTH)
    got = _gradients(pairwise_scores, a, b, c, (0, 1))
    want = _gradients(plain, a, b, c, (0, 1))
    # Same products in another operand order: float32 rounding at most (observed bit-equal).
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(h))))


def test_dense_and_pairwise_scores_keep_the_input_dtypes_in_mixed_precision():
    from mirrorgrad_jax.models import dense, pairwise_scores

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((200, 256)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((256, 8)) * 0.05, jnp.float32)
    gx, gw = jax.grad(lambda x, w: jnp.sum(dense(x, w)), argnums=(0, 1))(x, w)
    assert (gx.dtype, gw.dtype) == (jnp.bfloat16, jnp.float32)
    a = jnp.asarray(rng.standard_normal((200, 8)), jnp.bfloat16)
    ga, gb = jax.grad(lambda a, b: jnp.sum(pairwise_scores(a, b)), argnums=(0, 1))(a, x[:, :8].astype(jnp.float32))
    assert (ga.dtype, gb.dtype) == (jnp.bfloat16, jnp.float32)
