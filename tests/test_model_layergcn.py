"""LayerGCN: parameters, the refined forward and summed loss by hand, alternating pruning."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.graph import kept_edge_count, sample_edges_degree_sensitive
from mirrorgrad_jax.models import EpochSample
from mirrorgrad_jax.models.layergcn import LayerGCN, LayerGCNConfig
from helpers import jit_loss, jit_scores, packaged_config

D = 8
EPS = 1e-7  # the reference's degree epsilon


def _model(ds, **overrides):
    return LayerGCN(ds, dataclasses.replace(LayerGCNConfig(embedding_size=D), **overrides), rngs=nnx.Rngs(0))


def _dense(rows, cols, values, n):
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
    return a


def _normalised(edges, num_users, num_items):
    """Dense D^-1/2 A D^-1/2 of the (user, item) ``edges``, degrees counted from them."""
    n = num_users + num_items
    a = np.zeros((n, n))
    for u, i in edges:
        a[u, num_users + i] = a[num_users + i, u] = 1.0
    deg = a.sum(1) + EPS
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _refined_forward(a, e_u, e_i, n_layers):
    x0 = np.concatenate([e_u, e_i])
    x, total = x0, np.zeros_like(x0)
    for _ in range(n_layers):
        x = a @ x
        norm = np.maximum(np.linalg.norm(x, axis=1), 1e-8) * np.maximum(np.linalg.norm(x0, axis=1), 1e-8)
        x = (np.sum(x * x0, 1) / norm)[:, None] * x
        total += x
    return total[: len(e_u)], total[len(e_u) :]


def test_parameter_count_matches_card(tiny):
    model = _model(tiny)
    assert model.num_trainable_params() == D * (tiny.num_users + tiny.num_items)
    assert 64 * (35_598 + 18_357) == 3_453_120  # the reference's count on Amazon Sports, same formula
    assert LayerGCN.uses_negatives and not LayerGCN.multimodal


def test_loss_on_the_pruned_graph_and_scores_on_the_full_graph_by_hand(hand):
    # 6 distinct train edges, dropout 0.2 -> int(6 * 0.8) = 4 kept edges (8 COO entries).
    model = _model(hand, dropout=0.2, reg_weight=0.1)
    assert model.num_kept_edges == kept_edge_count(6, 0.2) == 4
    model.pre_epoch(np.random.default_rng(3))
    rows, cols = np.asarray(model.masked_rows[...]), np.asarray(model.masked_cols[...])
    kept = sorted({(int(r), int(c) - 3) for r, c in zip(rows, cols) if r < 3})
    assert len(kept) == 4 and set(kept) <= {tuple(p) for p in hand.train.tolist()}
    a_kept = _normalised(kept, 3, 4)
    np.testing.assert_allclose(_dense(rows, cols, model.masked_values[...], 7), a_kept, rtol=1e-6)

    e_u, e_i = np.asarray(model.users[...], np.float64), np.asarray(model.items[...], np.float64)
    users, items = _refined_forward(a_kept, e_u, e_i, 4)
    batch = np.array([[0, 1, 2, 0], [1, 2, 3, 0], [3, 0, 1, 2]])
    u = users[batch[0]]
    diff = np.sum(u * items[batch[1]], 1) - np.sum(u * items[batch[2]], 1)
    bpr = np.sum(np.log1p(np.exp(-diff)))  # SUMMED over the batch
    reg = 0.5 * (np.sum(e_u[batch[0]] ** 2) + np.sum(e_i[batch[1]] ** 2) + np.sum(e_i[batch[2]] ** 2))
    got = float(jit_loss(model, jnp.asarray(batch, jnp.int32), jax.random.key(0)))
    # float32 propagation of O(1) numbers through 4 layers: 1e-5 relative is ample.
    np.testing.assert_allclose(got, bpr + 0.1 * reg, rtol=1e-5)

    users_full, items_full = _refined_forward(_normalised(hand.train.tolist(), 3, 4), e_u, e_i, 4)
    np.testing.assert_allclose(jit_scores(model, jnp.arange(3)), users_full @ items_full.T, rtol=1e-5, atol=1e-6)


def test_pruning_alternates_degree_sensitive_then_uniform_by_construction(tiny):
    # The model's draws equal the graph sampler's with the same generator stream and the
    # rule degree-sensitive, uniform, degree-sensitive, uniform, ...
    model = _model(tiny, dropout=0.5)
    pairs = np.unique(tiny.train, axis=0)
    keep = kept_edge_count(len(pairs), 0.5)
    assert not bool(model.pruning_random[...])  # construction does not advance the toggle
    ours, reference = np.random.default_rng(11), np.random.default_rng(11)
    for call, degree_sensitive in enumerate([True, False, True, False]):
        model.pre_epoch(ours)
        expected = sample_edges_degree_sensitive(pairs, tiny.num_users, tiny.num_items, keep, reference, degree_sensitive=degree_sensitive)
        for part, want in zip(("rows", "cols", "values"), expected[:3]):
            got = getattr(model, f"masked_{part}")
            assert isinstance(got, EpochSample) and got.shape == (2 * keep,)  # static shapes
            np.testing.assert_array_equal(got[...], want, err_msg=f"call {call}")
        assert bool(model.pruning_random[...]) == degree_sensitive  # the NEXT call is uniform after a weighted one


def test_even_calls_prefer_low_degree_edges_and_odd_calls_are_uniform(tiny):
    model = _model(tiny, dropout=0.8)
    pairs = np.asarray(model.train_pairs[...])
    weight = 1 / np.sqrt(np.bincount(pairs[:, 0])[pairs[:, 0]] * np.bincount(pairs[:, 1])[pairs[:, 1]])
    index = {tuple(p): e for e, p in enumerate(pairs.tolist())}
    counts = np.zeros((2, len(pairs)))
    rng, calls = np.random.default_rng(0), 60
    for call in range(calls):
        model.pre_epoch(rng)
        rows, cols = np.asarray(model.masked_rows[...]), np.asarray(model.masked_cols[...])
        forward = rows < tiny.num_users
        counts[call % 2, [index[(int(r), int(c) - tiny.num_users)] for r, c in zip(rows[forward], cols[forward])]] += 1
    order = np.argsort(weight)
    rate = counts / (calls // 2)
    low, high = rate[:, order[:100]].mean(1), rate[:, order[-100:]].mean(1)
    # Each group mean averages 30 x 100 draws of a ~0.2 keep rate (sd ~ 0.01).
    assert high[0] > low[0] + 0.1, (low, high)  # degree-sensitive: 1/sqrt(d_u d_i) large -> kept more
    assert abs(high[1] - low[1]) < 0.06, (low, high)  # uniform: the same rate for both groups
    assert abs(rate[1].mean() - 115 / 576) < 1e-9  # exactly `keep` edges every call


def test_dropout_zero_trains_on_the_full_graph_without_toggling(hand):
    model = _model(hand, dropout=0.0)
    batch = jnp.asarray([[0, 1], [1, 2], [3, 0]], jnp.int32)
    before = float(jit_loss(model, batch, jax.random.key(0)))
    for seed in range(3):
        model.pre_epoch(np.random.default_rng(seed))
        assert not bool(model.pruning_random[...])
    assert not hasattr(model, "masked_rows")
    full = model.full_adjacency()
    for got, want in zip(model.training_adjacency()[:3], full[:3]):
        np.testing.assert_array_equal(got, want)
    assert float(jit_loss(model, batch, jax.random.key(0))) == before


def test_pre_epoch_changes_the_loss_but_not_the_scores(hand):
    model = _model(hand, dropout=0.2)
    batch = jnp.asarray([[0, 1, 2], [1, 2, 3], [3, 0, 1]], jnp.int32)
    before = np.asarray(jit_scores(model, jnp.arange(3)))
    losses = set()
    for seed in range(6):
        model.pre_epoch(np.random.default_rng(seed))
        np.testing.assert_array_equal(jit_scores(model, jnp.arange(3)), before)
        losses.add(round(float(jit_loss(model, batch, jax.random.key(0))), 5))
    assert len(losses) > 1


def test_a_dropout_that_keeps_no_edge_is_refused(hand):
    with pytest.raises(ValueError, match="dropout=0.9 keeps 0 of the 6 distinct train edges"):
        _model(hand, dropout=0.9)


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("layergcn", LayerGCNConfig)
    grid = config["model_config"]
    assert grid["n_layers"] == 4 and grid["dropout"] == [0.0, 0.1, 0.2]
    assert grid["reg_weight"] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
