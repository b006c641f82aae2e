"""Tests of the graph building blocks against small dense numpy computations.

Float32 results are compared with float64 numpy references at ``atol/rtol = 1e-5`` (a few
float32 ulps on values of order 1) unless a test says otherwise; integer outputs and sampled
sets are compared exactly. Sampling statistics use fixed seeds and tolerances of 5 binomial
standard deviations, so a correct implementation fails with probability below 1e-6 per check.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirrorgrad_jax.graph import (
    torch_cpu_topk,
    torch_cpu_topk_order,
    torch_cpu_topk_order_sparse,
    CooAdjacency,
    UserNeighbourLists,
    bipartite_edges,
    build_user_graph,
    column_order,
    combine_knn,
    edge_list_adjacency,
    kept_edge_count,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    knn_topk_cosine,
    layer_mean_propagate,
    normalize_knn_values,
    normalized_bipartite_adjacency,
    pack_user_graph,
    propagate,
    sample_edges_degree_sensitive,
    sample_user_neighbours,
    segment_mean,
    segment_softmax,
    symmetric_edge_norm,
    top_k_positions,
)

TOL = dict(atol=1e-5, rtol=1e-5)

# 3 users x 4 items; (1, 2) appears twice to exercise de-duplication.
U, I = 3, 4
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [1, 2], [0, 3]])
DISTINCT = np.unique(TRAIN, axis=0)


def _dense(rows, cols, values, n):
    mat = np.zeros((n, n))
    np.add.at(mat, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
    return mat


def _binary_adjacency(pairs, num_users, num_items):
    a = np.zeros((num_users + num_items,) * 2)
    a[pairs[:, 0], pairs[:, 1] + num_users] = 1.0
    a[pairs[:, 1] + num_users, pairs[:, 0]] = 1.0
    return a


# ---------------------------------------------------------------------------------------
# A_sym and COO propagation.


def test_normalized_bipartite_adjacency_matches_dense_sym_normalisation():
    adj = normalized_bipartite_adjacency(TRAIN, U, I)
    a = _binary_adjacency(DISTINCT, U, I)
    d = a.sum(1) + 1e-7
    expected = a / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(_dense(adj.rows, adj.cols, adj.values, U + I), expected, **TOL)
    assert np.all(np.diff(adj.rows) >= 0)
    x = np.random.default_rng(0).normal(size=(U + I, 3)).astype(np.float32)
    np.testing.assert_allclose(propagate(adj, jnp.asarray(x)), expected @ x, **TOL)


def _segment_form(adj, x):
    """The previous propagate: a gather then a row-sorted segment sum (the bit-level reference)."""
    messages = adj.values[:, None] * x[adj.cols]
    return jax.ops.segment_sum(messages, adj.rows, num_segments=adj.num_nodes, indices_are_sorted=True)


def _random_graph(seed=0, users=300, items=200, pairs=4000):
    rng = np.random.default_rng(seed)
    # Skewed item popularity, so some rows hold dozens of entries and summation order matters.
    train = np.stack([rng.integers(0, users, pairs), np.minimum(rng.zipf(1.5, pairs) - 1, items - 1)], 1)
    adj = normalized_bipartite_adjacency(train, users, items)
    return CooAdjacency(*(jnp.asarray(a) for a in adj[:3]), adj.num_nodes), rng


# Arrays go in as jit ARGUMENTS: closed-over constants may be constant-folded by XLA at
# compile time, with its own summation order, which would make the comparisons meaningless.


@pytest.mark.parametrize("symmetric", [False, True])
def test_propagate_kernel_is_bit_equal_to_gather_and_segment_sum(symmetric):
    adj, rng = _random_graph()
    x = jnp.asarray(rng.normal(size=(adj.num_nodes, 16)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(adj.num_nodes, 16)).astype(np.float32))

    def both(fn):
        return jax.jit(lambda r, c, v, x, g: jax.vjp(lambda x, v: fn(CooAdjacency(r, c, v, adj.num_nodes), x), x, v)[1](g))

    new = both(lambda a, x: propagate(a, x, symmetric=symmetric))(*adj[:3], x, g)
    old = both(_segment_form)(*adj[:3], x, g)
    forward = jax.jit(lambda r, c, v, x: (propagate(CooAdjacency(r, c, v, adj.num_nodes), x, symmetric=symmetric),
                                          _segment_form(CooAdjacency(r, c, v, adj.num_nodes), x)))(*adj[:3], x)
    # Forward A x, backward A^T g (a scatter-add, or A g for a symmetric A) and the gradient
    # of the values: every output row sums the same products in the same order.
    np.testing.assert_array_equal(forward[0], forward[1])
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1], old[1])


def test_propagate_with_column_order_is_bit_equal_after_an_edge_dropout():
    # A symmetric structure whose values were masked (SELFCFED_LGN's edge dropout): not
    # symmetric entry by entry any more, so the backward pass reads the stored column order.
    adj, rng = _random_graph(4)
    keep = rng.random(len(adj.values)) < 0.7
    values = jnp.where(jnp.asarray(keep), adj.values / 0.7, 0.0)
    order = jnp.asarray(column_order(adj.cols))
    x = jnp.asarray(rng.normal(size=(adj.num_nodes, 16)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(adj.num_nodes, 16)).astype(np.float32))

    def both(fn):
        def run(r, c, v, x, g, o):
            out, vjp = jax.vjp(lambda x, v: fn(CooAdjacency(r, c, v, adj.num_nodes), x, o), x, v)
            return out, vjp(g)

        return jax.jit(run)(adj.rows, adj.cols, values, x, g, order)

    new = both(lambda a, x, o: propagate(a, x, column_order=o))
    old = both(lambda a, x, o: _segment_form(a, x))
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1][0], old[1][0])  # A^T g: same sums, same order
    np.testing.assert_array_equal(new[1][1], old[1][1])
    assert sorted(np.asarray(order).tolist()) == list(range(len(adj.cols)))


def test_propagate_keeps_trailing_dims_forward_mode_and_vmap():
    adj, rng = _random_graph(1, users=40, items=30, pairs=300)
    x = jnp.asarray(rng.normal(size=(adj.num_nodes, 3, 2)).astype(np.float32))
    t = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
    f = lambda a, x: jnp.sum(jnp.sin(propagate(a, x, symmetric=True)))
    out = jax.jit(lambda x: propagate(adj, x))(x)
    np.testing.assert_array_equal(out.reshape(adj.num_nodes, 6), jax.jit(lambda x: propagate(adj, x))(x.reshape(adj.num_nodes, 6)))
    # Forward over reverse (mirrorgrad_jax.analysis.flatness's Hessian-vector products) goes through.
    hvp = jax.jit(lambda x, t: jax.jvp(jax.grad(lambda y: f(adj, y)), (x,), (t,))[1])(x, t)
    hvp_old = jax.jit(lambda x, t: jax.jvp(jax.grad(lambda y: jnp.sum(jnp.sin(_segment_form(adj, y.reshape(adj.num_nodes, 6))))), (x,), (t,))[1])(x, t)
    np.testing.assert_allclose(hvp, hvp_old, rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda x: propagate(adj, x))(jnp.stack([x[:, 0], x[:, 1]]))
    np.testing.assert_array_equal(batched[1], jax.jit(lambda x: propagate(adj, x))(x[:, 1]))


def test_layer_mean_gradient_within_float32_rounding_of_the_segment_form():
    # One propagation is bit-equal (above). Through x + A x + ..., XLA folded the residual
    # cotangent into the scatter-add's initial value in the segment form, so the same float32
    # sums are associated differently: a few ulps of the largest entry, not bit-equal.
    adj, rng = _random_graph(2)
    x = jnp.asarray(rng.normal(size=(adj.num_nodes, 16)).astype(np.float32))

    def grad(propagate_fn):
        def loss(r, c, v, x):
            a, total, h = CooAdjacency(r, c, v, adj.num_nodes), x, x
            for _ in range(2):
                h = propagate_fn(a, h)
                total = total + h
            return jnp.sum(jnp.sin(total / 3))

        return jax.jit(jax.grad(loss, argnums=3))(*adj[:3], x)

    new, old = grad(lambda a, h: propagate(a, h, symmetric=True)), grad(_segment_form)
    np.testing.assert_allclose(new, old, rtol=0, atol=8 * np.finfo(np.float32).eps * float(jnp.max(jnp.abs(old))))
    layer_mean = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(layer_mean_propagate(adj, x, 2, symmetric=True)))))(x)
    np.testing.assert_allclose(layer_mean, new, rtol=0, atol=8 * np.finfo(np.float32).eps * float(jnp.max(jnp.abs(old))))


def test_knn_column_order_path_matches_the_einsum():
    rng = np.random.default_rng(3)
    idx, val = combine_knn([(knn_item_graph(rng.normal(size=(120, 8)), 10), 0.3), (knn_item_graph(rng.normal(size=(120, 5)), 10), 0.7)])
    order = jnp.asarray(knn_column_order(idx))
    x = jnp.asarray(rng.normal(size=(120, 16)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(120, 16)).astype(np.float32))
    rows = jnp.repeat(jnp.arange(120), idx.shape[1])

    def run(fn):
        def forward_and_vjp(i, v, x, g, o):
            out, vjp = jax.vjp(lambda x, v: fn(i, v, x, o), x, v)
            return out, vjp(g)

        return jax.jit(forward_and_vjp)(idx, val, x, g, order)

    (fwd_new, (dx_new, dv_new)) = run(lambda i, v, x, o: knn_propagate(i, v, x, column_order=o))
    (fwd_old, (dx_old, dv_old)) = run(lambda i, v, x, o: knn_propagate(i, v, x))
    seq = jax.jit(lambda i, v, x: _segment_form(CooAdjacency(rows, i.reshape(-1), v.reshape(-1), 120), x))(idx, val, x)
    # Each row summed sequentially in list order: bit-equal to the segment form, and to
    # float32 rounding of the einsum (XLA's dot reduces the 20 products in another order).
    np.testing.assert_array_equal(fwd_new, seq)
    np.testing.assert_allclose(fwd_new, fwd_old, rtol=1e-6, atol=1e-6)
    # The transposed lists, read in column order, sum like the einsum's scatter-add: bit-equal.
    np.testing.assert_array_equal(dx_new, dx_old)
    np.testing.assert_allclose(dv_new, dv_old, rtol=1e-5, atol=1e-6)
    assert sorted(np.asarray(order).tolist()) == list(range(idx.size))


# ---------------------------------------------------------------------------------------
# PyG edge lists and aggregations.


def test_bipartite_edges_offsets_items_and_appends_reversed_copy():
    senders, receivers = bipartite_edges(TRAIN, U)
    e = len(DISTINCT)
    assert senders.dtype == np.int32 and receivers.dtype == np.int32
    np.testing.assert_array_equal(senders[:e], DISTINCT[:, 0])
    np.testing.assert_array_equal(receivers[:e], DISTINCT[:, 1] + U)
    np.testing.assert_array_equal(senders[e:], receivers[:e])
    np.testing.assert_array_equal(receivers[e:], senders[:e])
    np.testing.assert_array_equal(_dense(senders, receivers, np.ones(2 * e), U + I), _binary_adjacency(DISTINCT, U, I))


def test_bipartite_edges_one_directional_and_without_dedupe():
    senders, receivers = bipartite_edges(TRAIN, U, bidirectional=False, dedupe=False)
    np.testing.assert_array_equal(senders, TRAIN[:, 0])
    np.testing.assert_array_equal(receivers, TRAIN[:, 1] + U)
    with pytest.raises(ValueError, match="user 3"):
        bipartite_edges(np.array([[3, 0]]), U)


@pytest.mark.parametrize("num_pairs", [7, 150])
def test_edge_list_adjacency_sums_received_messages_forward_and_backward(num_pairs):
    # 7 pairs: ~2 entries per node (the segment-sum path); 150 on 35 nodes: ~8.6 (the CSR
    # kernel). Repeated pairs are kept (dedupe=False) and must count twice.
    rng = np.random.default_rng(num_pairs)
    users, items = (U, I) if num_pairs == 7 else (20, 15)
    train = TRAIN if num_pairs == 7 else np.stack([rng.integers(0, users, num_pairs), rng.integers(0, items, num_pairs)], 1)
    senders, receivers = bipartite_edges(train, users, bidirectional=True, dedupe=False)
    n = users + items
    adj = edge_list_adjacency(senders, receivers, n)
    assert adj.values.dtype == np.float32 and len(adj.rows) == len(senders)
    assert np.all(np.diff(adj.rows.astype(np.int64) * n + adj.cols) >= 0)  # sorted by row, then column
    counts = np.zeros((n, n))
    np.add.at(counts, (receivers, senders), 1.0)
    np.testing.assert_array_equal(_dense(adj.rows, adj.cols, adj.values, n), counts)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    w = rng.normal(size=(n, 5)).astype(np.float32)
    out = jax.jit(lambda v: propagate(adj, v, symmetric=True))(x)
    # float32 sums of a handful of terms against float64: a few ulps of the result.
    np.testing.assert_allclose(out, counts @ x.astype(np.float64), **TOL)
    grad = jax.grad(lambda v: jnp.sum(w * propagate(adj, v, symmetric=True)))(x)
    np.testing.assert_allclose(grad, counts.T @ w.astype(np.float64), **TOL)
    scatter = jax.grad(lambda v: jnp.sum(w * jax.ops.segment_sum(v[senders], receivers, num_segments=n)))(x)
    np.testing.assert_allclose(grad, scatter, **TOL)


def test_edge_list_adjacency_rejects_mismatched_or_out_of_range_edges():
    with pytest.raises(ValueError, match="differ in length"):
        edge_list_adjacency(np.array([0, 1]), np.array([1]), 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        edge_list_adjacency(np.array([0, 3]), np.array([1, 0]), 3)
    empty = edge_list_adjacency(np.zeros(0, np.int32), np.zeros(0, np.int32), 3)
    assert len(empty.rows) == 0 and empty.num_nodes == 3


def test_segment_mean_is_sum_over_max_count_one():
    rng = np.random.default_rng(1)
    ids = np.array([0, 2, 2, 4, 0, 2])  # segments 1 and 3 are empty
    data = rng.normal(size=(6, 3)).astype(np.float32)
    member = (ids[None, :] == np.arange(5)[:, None]).astype(np.float64)  # (segments, E)
    expected = (member @ data) / np.maximum(member.sum(1, keepdims=True), 1)
    out = jax.jit(segment_mean, static_argnums=2)(data, ids, 5)
    np.testing.assert_allclose(out, expected, **TOL)
    np.testing.assert_array_equal(np.asarray(out)[[1, 3]], 0.0)
    np.testing.assert_allclose(segment_mean(data[:, 0], ids, 5), expected[:, 0], **TOL)


def test_segment_softmax_equals_dense_softmax_per_segment_and_sums_to_one():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 6, size=40)
    logits = rng.normal(size=(40, 2)) * 3 + 500.0  # large offsets: the max shift must be there
    out = np.asarray(jax.jit(segment_softmax, static_argnums=2)(logits.astype(np.float32), ids, 7))
    for seg in range(7):
        members = ids == seg
        if members.any():
            z = logits[members] - logits[members].max(0)
            np.testing.assert_allclose(out[members], np.exp(z) / np.exp(z).sum(0), **TOL)
    sums = np.zeros((7, 2))
    np.add.at(sums, ids, out)
    present = np.isin(np.arange(7), ids)
    np.testing.assert_allclose(sums[present], 1.0, atol=1e-5)
    assert np.isfinite(out).all()


def test_symmetric_edge_norm_counts_degree_as_sender_occurrences():
    senders, receivers = bipartite_edges(TRAIN, U)
    norm = np.asarray(symmetric_edge_norm(senders, receivers, U + I))
    deg = np.bincount(senders, minlength=U + I).astype(np.float64)
    np.testing.assert_allclose(norm, 1 / np.sqrt(deg[senders] * deg[receivers]), **TOL)
    # The conv out_dst = sum_e norm_e x_src is D^-1/2 A D^-1/2 x on the bidirectional graph.
    x = np.random.default_rng(3).normal(size=(U + I, 4)).astype(np.float32)
    out = jax.ops.segment_sum(norm[:, None] * x[senders], receivers, num_segments=U + I)
    a = _binary_adjacency(DISTINCT, U, I)
    np.testing.assert_allclose(out, (a / np.sqrt(np.outer(deg, deg))) @ x, **TOL)


def test_symmetric_edge_norm_zero_sender_degree_gives_zero_not_inf():
    # One-directional: items never send, so their degree is 0 and every edge weight is 0.
    senders, receivers = bipartite_edges(TRAIN, U, bidirectional=False)
    norm = np.asarray(symmetric_edge_norm(senders, receivers, U + I))
    np.testing.assert_array_equal(norm, 0.0)


# ---------------------------------------------------------------------------------------
# Item-item kNN graphs.


def _brute_force_knn(features, k):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = f @ f.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1), sim


FEATS = np.random.default_rng(4).normal(size=(37, 6))


@pytest.mark.parametrize("chunk_size", [8, 37, 2048])  # 5 chunks (with padding), 1 chunk, clamped
def test_knn_topk_cosine_matches_dense_brute_force(chunk_size):
    k = 5
    idx, sim = knn_topk_cosine(FEATS.astype(np.float32), k, chunk_size=chunk_size)
    ref_idx, ref_sim, dense = _brute_force_knn(FEATS, k)
    # Guard against a near-tie making the check flaky: the k-th and (k+1)-th are well apart.
    gaps = np.sort(dense, axis=1)[:, ::-1]
    assert np.min(gaps[:, k - 1] - gaps[:, k]) > 1e-4
    assert idx.shape == (37, k) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, **TOL)
    np.testing.assert_array_equal(idx[:, 0], np.arange(37))  # the item itself comes first


def test_knn_item_graph_binary_values_are_one_over_k():
    k = 5
    idx, val = knn_item_graph(FEATS, k, chunk_size=8, values="binary")
    ref_idx, _, _ = _brute_force_knn(FEATS, k)
    np.testing.assert_array_equal(idx, ref_idx)
    # Dense reference: binary pattern, D^-1/2 P D^-1/2 with D the row counts + 1e-7.
    pattern = np.zeros((37, 37))
    np.put_along_axis(pattern, ref_idx, 1.0, axis=1)
    r = pattern.sum(1) + 1e-7
    dense = pattern / np.sqrt(np.outer(r, r))
    np.testing.assert_allclose(val, np.take_along_axis(dense, ref_idx, axis=1), rtol=1e-6)
    np.testing.assert_allclose(val, 1 / (k + 1e-7), rtol=1e-6)


def test_knn_item_graph_cosine_values_match_dense_sym_normalised_topk():
    k = 5
    idx, val = knn_item_graph(FEATS, k, chunk_size=8, values="cosine")
    ref_idx, ref_sim, _ = _brute_force_knn(FEATS, k)
    kept = np.zeros((37, 37))
    np.put_along_axis(kept, ref_idx, ref_sim, axis=1)
    r = kept.sum(1)
    dense = kept / np.sqrt(np.outer(r, r))
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, np.take_along_axis(dense, ref_idx, axis=1), **TOL)


def test_knn_zero_feature_row_is_finite():
    feats = FEATS.copy()
    feats[3] = 0.0
    idx, val = knn_item_graph(feats, 4, values="cosine")
    assert np.isfinite(np.asarray(val)).all()
    with pytest.raises(ValueError, match="k must be"):
        knn_item_graph(feats, 38)


def test_combine_knn_and_propagate_equal_dense_weighted_sum():
    k = 4
    rng = np.random.default_rng(5)
    image = knn_item_graph(rng.normal(size=(37, 6)), k, chunk_size=16)
    text = knn_item_graph(FEATS, k, chunk_size=16)
    idx, val = combine_knn([(image, 0.1), (text, 0.9)])
    assert idx.shape == (37, 2 * k) and val.shape == (37, 2 * k)
    rows = np.repeat(np.arange(37), k)
    dense = 0.1 * _dense(rows, np.ravel(image[0]), np.ravel(image[1]), 37) + 0.9 * _dense(
        rows, np.ravel(text[0]), np.ravel(text[1]), 37
    )
    # Both graphs contain every self-loop (1/k each), so overlapping entries must add up.
    np.testing.assert_allclose(np.diag(dense), 1 / k, rtol=1e-5)
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-5)  # row-stochastic average
    x = rng.normal(size=(37, 3)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(knn_propagate)(idx, val, x), dense @ x, **TOL)
    np.testing.assert_allclose(knn_propagate(idx, val, x[:, 0]), dense @ x[:, 0], **TOL)


def test_normalize_knn_values_handles_repeated_columns_like_dense():
    idx = np.array([[0, 1, 1], [1, 2, 0], [2, 2, 2]])
    val = np.array([[0.5, 0.2, 0.3], [1.0, 0.4, 0.1], [0.0, 0.0, 0.0]], np.float32)
    rows = np.repeat(np.arange(3), 3)
    dense = _dense(rows, idx.ravel(), val.ravel(), 3)
    r = dense.sum(1)
    inv = np.where(r > 0, 1 / np.sqrt(np.where(r > 0, r, 1)), 0.0)
    expected = dense * np.outer(inv, inv)
    out = normalize_knn_values(idx, val)
    np.testing.assert_allclose(_dense(rows, idx.ravel(), np.ravel(out), 3), expected, **TOL)


# ---------------------------------------------------------------------------------------
# Per-epoch edge sampling.

BACKENDS = {
    "numpy": lambda seed: np.random.default_rng(seed),
    "jax": lambda seed: jax.random.key(seed),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("degree_sensitive", [True, False])
def test_sampled_edges_are_distinct_train_edges_renormalised_and_mirrored(backend, degree_sensitive):
    keep = 4
    for seed in range(5):
        rng = BACKENDS[backend](seed)
        adj = sample_edges_degree_sensitive(DISTINCT, U, I, keep, rng, degree_sensitive=degree_sensitive)
        assert isinstance(adj, CooAdjacency) and adj.num_nodes == U + I
        rows, cols, values = (np.asarray(a) for a in adj[:3])
        assert rows.shape == cols.shape == values.shape == (2 * keep,)  # static size
        assert np.all(np.diff(rows) >= 0)
        forward = rows < U
        kept = np.stack([rows[forward], cols[forward] - U], axis=1)
        assert len(kept) == keep
        assert len(np.unique(kept, axis=0)) == keep  # no duplicates
        assert set(map(tuple, kept)) <= set(map(tuple, DISTINCT))  # only train edges
        a = _binary_adjacency(kept, U, I)  # mirrored, re-normalised with the new degrees
        d = a.sum(1) + 1e-7
        np.testing.assert_allclose(_dense(rows, cols, values, U + I), a / np.sqrt(np.outer(d, d)), **TOL)


def test_sampling_keep_all_returns_the_full_normalised_adjacency():
    full = normalized_bipartite_adjacency(TRAIN, U, I)
    adj = sample_edges_degree_sensitive(DISTINCT, U, I, len(DISTINCT), np.random.default_rng(0))
    for got, want in zip(adj[:3], full[:3]):
        np.testing.assert_allclose(got, want, **TOL)
    with pytest.raises(ValueError, match="keep must be"):
        sample_edges_degree_sensitive(DISTINCT, U, I, len(DISTINCT) + 1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator or a JAX PRNG key"):
        sample_edges_degree_sensitive(DISTINCT, U, I, 2, 0)
    # int(E * (1 - p)) truncates in floating point, as the reference: 1 - 0.9 < 0.1.
    assert kept_edge_count(100, 0.8) == 19
    assert kept_edge_count(100, 0.9) == 9
    assert kept_edge_count(1000, 0.5) == 500


# A star: user 0 has every item (degree 5) and users 1..3 have one item each, so the edges of
# user 0 have weight 1/sqrt(5 d_i) and the others 1/sqrt(d_i): degree-sensitive sampling must
# prefer the low-degree edges.
STAR = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0], [2, 1], [3, 4]])
STAR_U, STAR_I = 4, 5


def _inclusion_probabilities(weights, keep):
    """Exact P(edge in sample) of sequential weighted draws without replacement."""
    prob = np.zeros(len(weights))
    for order in itertools.permutations(range(len(weights)), keep):
        p, left = 1.0, weights.sum()
        for e in order:
            p *= weights[e] / left
            left -= weights[e]
        prob[list(order)] += p
    return prob


def _star_inclusion_frequency(backend, degree_sensitive, draws, keep):
    lookup = {tuple(p): n for n, p in enumerate(STAR)}
    def rows_cols(rng_or_key):
        adj = sample_edges_degree_sensitive(STAR, STAR_U, STAR_I, keep, rng_or_key, degree_sensitive=degree_sensitive)
        return adj.rows, adj.cols

    if backend == "numpy":
        rng = np.random.default_rng(123)
        rows = np.stack([np.stack(rows_cols(rng)) for _ in range(draws)])
    else:
        keys = jax.random.split(jax.random.key(123), draws)
        rows = np.asarray(jax.vmap(lambda key: jnp.stack(rows_cols(key)))(keys))
    counts = np.zeros(len(STAR))
    for r, c in zip(rows[:, 0, :keep].ravel(), rows[:, 1, :keep].ravel()):  # user -> item half
        counts[lookup[(int(r), int(c) - STAR_U)]] += 1
    return counts / draws


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_degree_sensitive_sampling_has_multinomial_without_replacement_inclusion_rates(backend):
    # Statistical test: over 4000 draws of keep=3 of the 8 star edges, every edge's inclusion
    # frequency is within 5 binomial std of the exact probability of torch.multinomial(w, 3)
    # (sequential draws without replacement), with w = 1/sqrt(d_u d_i). In particular every
    # low-degree edge (users 1..3) is kept more often than a uniform subset would (3/8) and
    # every edge of the degree-5 user 0 less often.
    draws, keep = 4000, 3
    deg_u = np.bincount(STAR[:, 0], minlength=STAR_U)
    deg_i = np.bincount(STAR[:, 1], minlength=STAR_I)
    w = 1 / np.sqrt((deg_u[STAR[:, 0]] + 1e-7) * (deg_i[STAR[:, 1]] + 1e-7))
    expected = _inclusion_probabilities(w, keep)
    freq = _star_inclusion_frequency(backend, True, draws, keep)
    tol = 5 * np.sqrt(expected * (1 - expected) / draws)
    np.testing.assert_array_less(np.abs(freq - expected), tol)
    assert freq[5:].min() > keep / len(STAR) > freq[:5].max()  # low-degree edges are preferred


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_uniform_sampling_keeps_every_edge_equally_often(backend):
    draws, keep = 4000, 3
    freq = _star_inclusion_frequency(backend, False, draws, keep)
    p = keep / len(STAR)
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / draws))


# ---------------------------------------------------------------------------------------
# User-user graph.


def _softmax(x):
    z = np.exp(x - x.max())
    return z / z.sum()


def test_sample_user_neighbours_truncates_pads_and_softmaxes_counts():
    k = 6
    graph = {
        0: (np.arange(1, 9), np.arange(8, 0, -1).astype(np.float32)),  # 8 >= k neighbours
        1: ([0, 4, 2], [3.0, 2.0, 1.0]),  # 0 < n < k: padded
        2: (np.zeros(0, np.int64), np.zeros(0, np.float32)),  # no neighbours
        3: ([1], [5.0]),  # one neighbour fills every slot
        4: ([0, 1, 2, 3, 5, 6], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),  # exactly k
    }
    num_users = 9  # users 5..8 are missing from the mapping: no neighbours
    for seed in range(10):
        idx, weights = sample_user_neighbours(graph, num_users, k, rng=np.random.default_rng(seed))
        assert idx.shape == weights.shape == (num_users, k)
        assert idx.dtype == np.int32 and weights.dtype == np.float32
        np.testing.assert_array_equal(idx[0], np.arange(1, 7))
        np.testing.assert_allclose(weights[0], _softmax(np.arange(8, 2, -1.0)), **TOL)
        np.testing.assert_array_equal(idx[1, :3], [0, 4, 2])  # originals stay in place
        assert set(idx[1, 3:]) <= {0, 4, 2}  # padding only repeats existing neighbours
        count_of = {0: 3.0, 4: 2.0, 2: 1.0}
        np.testing.assert_allclose(weights[1], _softmax(np.array([count_of[i] for i in idx[1]])), **TOL)
        for empty in (2, 5, 6, 7, 8):
            np.testing.assert_array_equal(idx[empty], 0)
            np.testing.assert_array_equal(weights[empty], 0.0)
        np.testing.assert_array_equal(idx[3], 1)
        np.testing.assert_allclose(weights[3], 1 / k, **TOL)
        np.testing.assert_array_equal(idx[4], [0, 1, 2, 3, 5, 6])
    packed = pack_user_graph(graph, num_users, width=10)
    assert isinstance(packed, UserNeighbourLists)
    for a, b in zip(
        sample_user_neighbours(graph, num_users, k, rng=np.random.default_rng(7)),
        sample_user_neighbours(packed, num_users, k, rng=np.random.default_rng(7)),
    ):
        np.testing.assert_array_equal(a, b)


def test_sample_user_neighbours_pads_from_the_growing_list():
    # Two neighbours (a, b) padded to k = 4: slot 2 copies one of 2 slots, slot 3 one of 3.
    # That is a Polya urn, so the number of a's is 1, 2 or 3 with probability 1/3 each. Padding
    # from the original two only would give 1/4, 1/2, 1/4 instead (off by >= 0.083).
    num_users, k = 6000, 4
    graph = {u: ([1, 2], [1.0, 1.0]) for u in range(num_users)}
    idx, _ = sample_user_neighbours(graph, num_users, k, rng=np.random.default_rng(11))
    freq = np.bincount((idx == 1).sum(1), minlength=5)[1:4] / num_users
    np.testing.assert_array_less(np.abs(freq - 1 / 3), 5 * np.sqrt(2 / 9 / num_users))


def _brute_force_user_graph(train, num_users, max_neighbours):
    items = [set() for _ in range(num_users)]
    for u, i in train:
        items[u].add(i)
    graph = {}
    for a in range(num_users):
        pairs = []
        for b in range(num_users):
            shared = len(items[a] & items[b])
            if b != a and shared > 0:
                pairs.append((-shared, b))
        pairs.sort()
        pairs = pairs[:max_neighbours]
        graph[a] = ([b for _, b in pairs], [float(-c) for c, _ in pairs])
    return graph


@pytest.mark.parametrize("max_neighbours, pair_budget", [(200, 1 << 23), (3, 1 << 23), (200, 5), (2, 1)])
def test_build_user_graph_matches_double_loop(max_neighbours, pair_budget):
    rng = np.random.default_rng(6)
    num_users = 9  # user 8 has no interactions
    train = np.stack([rng.integers(0, 8, 40), rng.integers(0, 6, 40)], axis=1)
    train = np.concatenate([train, train[:5]])  # duplicates must not count twice
    got = build_user_graph(train, num_users, max_neighbours, pair_budget=pair_budget)
    want = _brute_force_user_graph(train, num_users, max_neighbours)
    assert sorted(got) == list(range(num_users))
    for user in range(num_users):
        np.testing.assert_array_equal(got[user][0], want[user][0])
        np.testing.assert_array_equal(got[user][1], want[user][1])
        assert got[user][1].dtype == np.float32
    assert len(got[8][0]) == 0


def _torch_script_user_graph(train, num_users, max_neighbours):
    """MMRec's ``dualgnn-gen-u-u-matrix.py`` written out densely: the (U, U) count matrix, then
    ``torch.topk(row, min(n_u, max_neighbours))`` per user, with torch's CPU order from
    :func:`torch_cpu_topk_order` (itself checked against recorded torch answers below)."""
    items = [set() for _ in range(num_users)]
    for u, i in train:
        items[int(u)].add(int(i))
    counts = np.zeros((num_users, num_users), np.float32)
    for a, b in itertools.combinations(range(num_users), 2):
        counts[a, b] = counts[b, a] = len(items[a] & items[b])
    graph = {}
    for u in range(num_users):
        order = torch_cpu_topk_order(counts[u].tolist(), min(int((counts[u] > 0).sum()), max_neighbours))
        graph[u] = (order, counts[u][order])
    return graph


@pytest.mark.parametrize("max_neighbours", [200, 4])
def test_build_user_graph_torch_cpu_ties_follow_the_script_row_by_row(max_neighbours):
    rng = np.random.default_rng(8)
    num_users = 70  # small counts on 6 items: many ties; 64 * 4 <= 70 takes the heap path
    train = np.stack([rng.integers(0, num_users - 1, 300), rng.integers(0, 6, 300)], axis=1)
    got = build_user_graph(train, num_users, max_neighbours, ties="torch_cpu")
    want = _torch_script_user_graph(train, num_users, max_neighbours)
    lowest = build_user_graph(train, num_users, max_neighbours)
    for user in range(num_users):
        np.testing.assert_array_equal(got[user][0], want[user][0])
        np.testing.assert_array_equal(got[user][1], want[user][1])
    assert len(got[num_users - 1][0]) == 0  # the last user has no interactions
    # the tie order is not the default's on these data
    assert sum(not np.array_equal(got[u][0], lowest[u][0]) for u in range(num_users)) > num_users // 2
    with pytest.raises(ValueError, match="ties must be 'lowest_id' or 'torch_cpu', got 'random'"):
        build_user_graph(train, num_users, ties="random")


# torch.topk(torch.tensor(row), k).indices on the CPU (sorted=True), recorded with torch 2.13.0
# (rows are 0 except at the listed positions): the order torch leaves tied values in. Both of
# its paths: std::partial_sort when 64 k <= n; std::nth_element, then std::sort of the first
# k - 1, otherwise (the n = 100, k = 50 row sorts more than 16 pairs: the introsort loop).
RECORDED_TORCH_ORDER = [
    (17, 3, {6: 4, 11: 4, 14: 3, 16: 4}, [16, 6, 11]),
    (40, 8, {9: 4, 16: 2, 19: 2, 22: 4, 28: 3, 29: 2, 32: 1, 38: 1}, [22, 9, 28, 29, 16, 19, 32, 38]),
    (129, 6, {26: 1, 35: 3, 42: 1, 49: 2, 66: 3, 100: 4}, [100, 66, 35, 49, 26, 42]),
    (100, 10, {6: 3, 7: 2, 18: 4, 22: 3, 26: 1, 30: 3, 31: 1, 33: 1, 35: 3, 38: 2, 39: 1, 40: 3, 42: 3, 46: 3, 47: 2,
               55: 2, 57: 4, 76: 1, 78: 1, 83: 3, 85: 1, 86: 3, 89: 3, 91: 1}, [57, 18, 42, 89, 86, 83, 46, 22, 6, 35]),
    (100, 50, {3: 2, 4: 3, 6: 1, 9: 2, 10: 3, 11: 2, 12: 1, 13: 2, 20: 2, 21: 3, 23: 3, 24: 2, 26: 1, 30: 2, 31: 1,
               32: 3, 33: 3, 35: 2, 36: 3, 37: 2, 39: 2, 40: 3, 46: 3, 50: 3, 52: 3, 53: 1, 54: 2, 55: 3, 57: 1, 63: 1,
               64: 2, 65: 3, 66: 3, 67: 3, 69: 2, 71: 1, 74: 3, 79: 2, 80: 3, 83: 3, 87: 3, 88: 1, 89: 3, 90: 2, 92: 2,
               94: 3, 96: 3, 97: 2, 98: 1, 99: 3},
     [99, 10, 4, 50, 21, 23, 32, 33, 36, 40, 46, 52, 65, 66, 67, 74, 80, 83, 87, 89, 55, 94, 96, 92, 20, 35, 90, 37, 24,
      39, 54, 13, 79, 64, 30, 3, 11, 9, 97, 69, 63, 57, 12, 71, 53, 6, 26, 31, 88, 98]),
    (1000, 5, {0: 1, 190: 2, 203: 1, 240: 2, 424: 1, 439: 1, 537: 2, 670: 1, 774: 1, 834: 1, 895: 2, 955: 2}, [240, 190, 895, 955, 537]),
    (1000, 3, {49: 1, 160: 2, 173: 1, 199: 2, 225: 1, 254: 1, 344: 2, 474: 2, 680: 2, 743: 2, 761: 2, 971: 2, 999: 1}, [344, 160, 199]),
]  # fmt: skip


@pytest.mark.parametrize("n, k, nonzero, expected", RECORDED_TORCH_ORDER, ids=[f"n{c[0]}-k{c[1]}" for c in RECORDED_TORCH_ORDER])
def test_torch_cpu_topk_order_reproduces_recorded_torch_answers(n, k, nonzero, expected):
    row = np.zeros(n)
    row[list(nonzero)] = list(nonzero.values())
    assert torch_cpu_topk_order(row, k) == expected
    assert sorted(range(n), key=lambda j: (-row[j], j))[:k] != expected  # "lowest index first" answers otherwise
    assert torch_cpu_topk(row, k) == sorted(expected)  # the same selection, as a set
    cols = np.asarray(sorted(nonzero))
    assert torch_cpu_topk_order_sparse(cols, row[cols], n, k) == expected


def test_built_user_graph_feeds_the_sampler():
    train = np.array([[0, 0], [1, 0], [1, 1], [2, 1], [3, 2]])
    graph = build_user_graph(train, 4)
    idx, weights = sample_user_neighbours(graph, 4, 3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(idx[0], 1)  # user 0's only neighbour is 1
    assert set(idx[1]) == {0, 2}
    np.testing.assert_allclose(weights[:3].sum(1), 1.0, **TOL)
    np.testing.assert_array_equal(weights[3], 0.0)  # user 3 shares no item


# ---------------------------------------------------------------------------------------
# top_k_positions: lax.top_k's positions through the blocks' maxima.


def _stable_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Descending by value, ties to the lower position: a stable sort of the negated row."""
    return np.argsort(-x, axis=-1, kind="stable")[..., :k]


def test_top_k_positions_keeps_a_tie_in_a_later_block_out_by_position():
    # 40 entries in blocks of 2; the value 7 at 3, 10, 11 and 30. The top 2 by hand: 3 and
    # 10 (ties to the lower position), though block 15 (30, 31) ties block 5 (10, 11).
    x = np.zeros(40, np.float32)
    x[[3, 10, 11, 30]] = 7.0
    assert top_k_positions(jnp.asarray(x), 2, block=2).tolist() == [3, 10]
    assert top_k_positions(jnp.asarray(x), 4, block=2).tolist() == [3, 10, 11, 30]


def test_top_k_positions_reads_the_tail_that_no_block_covers():
    # 42 entries in blocks of 4: ten blocks (0-39) and a tail (40, 41) outside every block.
    x = np.zeros(42, np.float32)
    x[[3, 41]] = [7.0, 9.0]
    x[40] = 7.0
    assert top_k_positions(jnp.asarray(x), 2, block=4).tolist() == [41, 3]
    assert top_k_positions(jnp.asarray(x), 3, block=3).tolist() == [41, 3, 40]  # 14 blocks, no tail


@pytest.mark.parametrize(
    "shape, k, block, levels",
    [
        ((5, 1000), 10, 16, 3),  # 62 blocks (>= 4k: the blocked path) and a tail of 8
        ((2, 3, 257), 4, 8, 2),  # three leading axes' worth of rows, tail of 1, two values only
        ((6, 160), 10, 4, 50),  # exactly 4k blocks, no tail
        ((6, 159), 10, 4, 50),  # 39 blocks < 4k: lax.top_k directly
        ((64,), 1, 1, 1000),  # one row, blocks of one entry
        ((4, 300), 300, 1, 5),  # k = n
    ],
)
def test_top_k_positions_equal_a_stable_sort_with_ties_and_tails(shape, k, block, levels):
    rng = np.random.default_rng(sum(shape) + k + block)
    x = rng.integers(0, levels, size=shape).astype(np.float32)  # few values: many ties
    got = np.asarray(jax.jit(lambda a: top_k_positions(a, k, block=block))(jnp.asarray(x)))
    assert got.dtype == np.int32 and got.shape == shape[:-1] + (k,)
    np.testing.assert_array_equal(got, _stable_top_k(x, k))
    np.testing.assert_array_equal(got, np.asarray(jax.lax.top_k(jnp.asarray(x), k)[1]))


def test_top_k_positions_on_integers_booleans_and_infinities():
    rng = np.random.default_rng(3)
    ints = rng.integers(-5, 5, size=(3, 500)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(top_k_positions(jnp.asarray(ints), 7, block=8)), _stable_top_k(ints, 7))
    floats = rng.standard_normal((3, 500)).astype(np.float32)
    floats[0, :450] = -np.inf  # blocks whose maximum is -inf, and a row with only 50 finite values
    floats[1, [17, 400]] = np.inf
    np.testing.assert_array_equal(np.asarray(top_k_positions(jnp.asarray(floats), 7, block=8)), _stable_top_k(floats, 7))
    flags = rng.random((3, 500)) < 0.01  # booleans: the few True first, then False by position
    np.testing.assert_array_equal(np.asarray(top_k_positions(jnp.asarray(flags), 7, block=8)), _stable_top_k(flags.astype(np.int8), 7))


@pytest.mark.parametrize("k, block, message", [(0, 16, "k must be in"), (11, 16, "k must be in"), (3, 0, "block must be")])
def test_top_k_positions_refuses_k_or_block_out_of_range(k, block, message):
    with pytest.raises(ValueError, match=message):
        top_k_positions(jnp.zeros((2, 10)), k, block=block)


def test_top_k_positions_selects_through_blocks_only_on_the_cpu():
    """Lowered for a GPU or TPU (without one here: jax.export), the program is lax.top_k alone."""
    from jax import export

    program = jax.jit(lambda a: top_k_positions(a, 5))
    x = jnp.zeros((4, 1000))
    lowered = {platform: export.export(program, platforms=[platform])(x).mlir_module() for platform in ("cpu", "cuda", "tpu")}
    assert "reduce_window" in lowered["cpu"]
    assert "reduce_window" not in lowered["cuda"] and "reduce_window" not in lowered["tpu"]
