"""FREEDOM: parameters, gradients, the two graphs by hand, pruning, frozen kNN graph."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.graph import kept_edge_count, knn_item_graph
from mirrorgrad_jax.models.freedom import FREEDOM, FREEDOMConfig
from helpers import random_batch, packaged_config

D = 8
EPS = 1e-7  # the reference's degree epsilon


def _model(ds, **overrides):
    return FREEDOM(ds, dataclasses.replace(FREEDOMConfig(embedding_size=D), **overrides), rngs=nnx.Rngs(0))


_batch = random_batch


def _grad_fn(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Jitted: one compilation is cheaper than compiling every eager op of the backward pass.
    grad = jax.jit(jax.grad(lambda p, b, k: nnx.merge(graphdef, p, rest, copy=True).loss(b, k)))
    return graphdef, params, rest, grad


def _dense(rows, cols, values, n):
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
    return a


def _dense_knn(features, k):
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    top = np.argsort(-(normed @ normed.T), axis=1)[:, :k]
    a = np.zeros((len(features),) * 2)
    a[np.repeat(np.arange(len(features)), k), top.ravel()] = 1.0
    deg = a.sum(1) + EPS  # row counts on both sides
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _dense_forward(a, e_u, e_i, mm, n_ui_layers=2):
    x = np.concatenate([e_u, e_i])
    layers = [x]
    for _ in range(n_ui_layers):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    return mean[: len(e_u)], mean[len(e_u) :] + mm @ e_i


def test_parameter_count_matches_card(tiny):
    model = _model(tiny)
    u, i = tiny.num_users, tiny.num_items
    # The reference's count: d(U + I) + per modality [raw table I*F + projection F*d + d]; no predictor.
    expected = D * (u + i) + sum(i * f.shape[1] + f.shape[1] * D + D for f in tiny.features.values())
    assert model.num_trainable_params() == expected
    u, i, d, fv, ft = 35_598, 18_357, 64, 4096, 384
    assert d * (u + i) + i * fv + fv * d + d + i * ft + ft * d + d == 85_979_328


def test_reg_weight_zero_leaves_the_feature_branches_without_gradient(tiny):
    # reg_weight weights the modality BPR losses (not an L2): at 0 they contribute nothing.
    model = _model(tiny, reg_weight=0.0)
    _, params, _, grad = _grad_fn(model)
    grads = grad(params, _batch(tiny), jax.random.key(0))
    for name in ("image_emb", "image_trs_w", "image_trs_b", "text_emb", "text_trs_w", "text_trs_b"):
        assert float(jnp.abs(grads[name][...]).max()) == 0.0, name
    assert float(jnp.abs(grads["users"][...]).max()) > 0.0


def test_frozen_multimodal_graph_by_hand(hand):
    model = _model(hand, knn_k=2)
    image, text = hand.features["image"].astype(np.float64), hand.features["text"].astype(np.float64)
    expected = 0.1 * _dense_knn(image, 2) + 0.9 * _dense_knn(text, 2)
    # Each K_bin row holds 2 entries of 1/(2 + 1e-7); the mix keeps rows summing to 1.
    np.testing.assert_allclose(expected.sum(1), 1.0, rtol=1e-6)
    got = _dense(np.repeat(np.arange(4), model.mm_idx.shape[1]), np.asarray(model.mm_idx[...]).ravel(), np.asarray(model.mm_val[...]).ravel(), 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_training_forward_on_the_pruned_graph_by_hand(hand):
    # 6 distinct train edges, dropout 0.5 -> int(6 * 0.5) = 3 kept edges, 6 COO entries.
    model = _model(hand, knn_k=2, dropout=0.5, reg_weight=0.1)
    assert model.num_kept_edges == kept_edge_count(6, 0.5) == 3
    model.pre_epoch(np.random.default_rng(5))
    rows, cols = np.asarray(model.masked_rows[...]), np.asarray(model.masked_cols[...])
    assert rows.shape == (6,)
    kept = sorted((int(r), int(c) - 3) for r, c in zip(rows, cols) if r < 3)
    assert len(set(kept)) == 3 and set(kept) <= {tuple(p) for p in hand.train.tolist()}
    # Re-normalised with the kept degrees: 1/sqrt((d'_u + eps)(d'_i + eps)), both directions.
    deg_u = np.bincount([u for u, _ in kept], minlength=3)
    deg_i = np.bincount([i for _, i in kept], minlength=4)
    a = np.zeros((7, 7))
    for u, i in kept:
        a[u, 3 + i] = a[3 + i, u] = 1 / np.sqrt((deg_u[u] + EPS) * (deg_i[i] + EPS))
    np.testing.assert_allclose(_dense(rows, cols, model.masked_values[...], 7), a, rtol=1e-6)

    mm = _dense(np.repeat(np.arange(4), model.mm_idx.shape[1]), np.asarray(model.mm_idx[...]).ravel(), np.asarray(model.mm_val[...]).ravel(), 4)
    e_u, e_i = np.asarray(model.users[...], np.float64), np.asarray(model.items[...], np.float64)
    users, items = _dense_forward(a, e_u, e_i, mm)
    got_u, got_i = model.forward(model.masked_adjacency())
    # float32 propagation of O(1) numbers: 1e-5 relative is ample.
    np.testing.assert_allclose(got_u, users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_i, items, rtol=1e-5, atol=1e-6)

    batch = np.array([[0, 1, 2], [1, 2, 3], [3, 0, 1]])
    u = users[batch[0]]
    bpr = lambda p, n: -np.mean(np.log(1 / (1 + np.exp(-(np.sum(u * p, 1) - np.sum(u * n, 1))))))
    expected = bpr(items[batch[1]], items[batch[2]])
    for role in ("text", "image"):
        feats = hand.features[role] @ np.asarray(getattr(model, f"{role}_trs_w")[...], np.float64) + np.asarray(getattr(model, f"{role}_trs_b")[...])
        expected += 0.1 * bpr(feats[batch[1]], feats[batch[2]])
    np.testing.assert_allclose(float(model.loss(jnp.asarray(batch, jnp.int32), jax.random.key(0))), expected, rtol=1e-5)


def test_scores_use_the_full_unpruned_graph_by_hand(hand):
    model = _model(hand, knn_k=2, dropout=0.5)
    n = 7
    a = np.zeros((n, n))
    for u, i in hand.train:
        a[u, 3 + i] = a[3 + i, u] = 1.0
    deg = a.sum(1) + EPS
    a = a / np.sqrt(deg[:, None] * deg[None, :])
    mm = 0.1 * _dense_knn(hand.features["image"].astype(np.float64), 2) + 0.9 * _dense_knn(hand.features["text"].astype(np.float64), 2)
    users, items = _dense_forward(a, np.asarray(model.users[...], np.float64), np.asarray(model.items[...], np.float64), mm)
    before = np.asarray(model.scores(jnp.arange(3)))
    np.testing.assert_allclose(before, users @ items.T, rtol=1e-5, atol=1e-6)
    # A new edge sample changes the training loss but not the evaluation scores.
    batch = jnp.asarray([[0, 1, 2], [1, 2, 3], [3, 0, 1]], jnp.int32)
    losses = set()
    for seed in range(6):
        model.pre_epoch(np.random.default_rng(seed))
        np.testing.assert_array_equal(model.scores(jnp.arange(3)), before)
        losses.add(round(float(model.loss(batch, jax.random.key(0))), 6))
    assert len(losses) > 1


def test_pre_epoch_keeps_static_shapes_and_prefers_low_degree_edges(tiny):
    model = _model(tiny, dropout=0.8)
    keep = kept_edge_count(576, 0.8)
    assert model.num_kept_edges == keep == 115  # int(576 * (1 - 0.8)) truncates 115.2
    pairs = np.asarray(model.train_pairs[...])
    weight = 1 / np.sqrt(np.bincount(pairs[:, 0])[pairs[:, 0]] * np.bincount(pairs[:, 1])[pairs[:, 1]])
    index = {tuple(p): e for e, p in enumerate(pairs.tolist())}
    rng, counts, samples = np.random.default_rng(0), np.zeros(len(pairs)), []
    for _ in range(40):
        model.pre_epoch(rng)
        rows, cols = np.asarray(model.masked_rows[...]), np.asarray(model.masked_cols[...])
        assert rows.shape == cols.shape == model.masked_values.shape == (2 * keep,)
        forward = rows < tiny.num_users
        counts[[index[(int(r), int(c) - tiny.num_users)] for r, c in zip(rows[forward], cols[forward])]] += 1
        samples.append(frozenset(zip(rows.tolist(), cols.tolist())))
    assert len(set(samples)) == 40  # a fresh sample every epoch
    # Degree-sensitive: edges with the largest 1/sqrt(d_u d_i) are kept far more often than
    # those with the smallest (uniform sampling would keep both about 20% of the time).
    order = np.argsort(weight)
    low, high = counts[order[:100]].mean() / 40, counts[order[-100:]].mean() / 40
    assert high > low + 0.1, (low, high)


def test_dropout_zero_trains_on_the_full_graph(hand):
    model = _model(hand, knn_k=2, dropout=0.0)
    model.pre_epoch(np.random.default_rng(0))
    for part in ("rows", "cols", "values"):
        np.testing.assert_array_equal(getattr(model, f"masked_{part}")[...], getattr(model, f"full_{part}")[...])


def test_multimodal_graph_stays_frozen_while_features_train(tiny):
    model = _model(tiny, reg_weight=1e-1)
    graphdef, params, rest, grad = _grad_fn(model)
    mm_before = (np.asarray(model.mm_idx[...]), np.asarray(model.mm_val[...]))
    batch = _batch(tiny)
    for step in range(3):
        g = grad(params, batch, jax.random.key(step))
        params = jax.tree.map(lambda p, d: p - 1.0 * d, params, g)
    trained = nnx.merge(graphdef, params, rest)
    assert not np.allclose(trained.image_emb[...], tiny.features["image"])  # fine-tuned
    np.testing.assert_array_equal(trained.mm_idx[...], mm_before[0])
    np.testing.assert_array_equal(trained.mm_val[...], mm_before[1])
    # ... and it is the graph of the RAW features.
    idx_t, _ = knn_item_graph(tiny.features["text"], 10)
    np.testing.assert_array_equal(np.asarray(trained.mm_idx[...])[:, 10:], idx_t)


def test_modality_roles(tiny):
    # Same sizes as ``tiny`` (shared compilations); only the modalities differ.
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.warns(UserWarning, match="no 'image' modality"):
        model = FREEDOM(text_only, FREEDOMConfig(embedding_size=D), rngs=nnx.Rngs(0))
    assert model.modalities == ("text",)
    # One modality: its kNN graph alone, weight 1.
    assert model.mm_val.shape == (40, 10)
    np.testing.assert_allclose(model.mm_val[...], 1 / (10 + EPS), rtol=1e-6)
    assert model.num_trainable_params() == D * 100 + 40 * 64 + 64 * D + D
    other = make_synthetic(num_users=60, num_items=40, modalities={"audio": 64}, seed=1)
    with pytest.raises(ValueError, match=r"FREEDOM needs an image and/or a text.*image_modality='image'.*\['audio'\]"):
        FREEDOM(other, FREEDOMConfig(embedding_size=D), rngs=nnx.Rngs(0))


def test_a_dropout_that_keeps_no_edge_is_refused(hand):
    with pytest.raises(ValueError, match="dropout=0.9 keeps 0 of the 6 distinct train edges"):
        _model(hand, knn_k=2, dropout=0.9)


def test_yaml_maps_onto_the_config_and_trainer():


    config = packaged_config("freedom", FREEDOMConfig)
    grid = config["model_config"]
    assert grid["dropout"] == [0.8, 0.9] and grid["reg_weight"] == [0.0, 1e-5, 1e-4, 1e-3]
    assert (grid["knn_k"], grid["mm_image_weight"], grid["n_mm_layers"], grid["n_ui_layers"]) == (10, 0.1, 1, 2)
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
