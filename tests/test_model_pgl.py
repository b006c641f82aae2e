"""PGL: parameters, the SVD subgraph against dense decompositions, forwards and loss terms by hand, sampling, options.

Tolerances: the model runs in float32 and the hand computations in float64. Forwards and
scores of O(1) numbers through a few sparse products: rtol 1e-5, atol 1e-6 (float32 has
~6e-8 relative rounding per operation, a few dozen operations per entry). SVD factors are
float64 on both sides: singular values to 1e-10 relative, vectors (after fixing the sign)
to 1e-8 (ARPACK converges to about machine precision over gaps of ~1e-2 between these
singular values). The stored subgraph is float32: 1e-6 relative, 1e-9 absolute.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import np_info_nce, packaged_config, random_batch
from mirrorgrad_jax.models import Constant, EpochSample
from mirrorgrad_jax.models.pgl import (
    PGL,
    PGLConfig,
    normalized_user_item_block,
    principal_factors,
    principal_subgraph,
)

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.errors import ConfigError

D = 4  # hand-sized embeddings (users and items are 2 D wide)
EPS = 1e-7  # the reference's degree epsilon
TOL = {"rtol": 1e-5, "atol": 1e-6}
BATCH = np.array([[0, 1, 2], [1, 2, 3], [3, 0, 1]])  # (user, positive) rows are train pairs of ``hand``

jit_loss = nnx.jit(lambda m, b, k: m.loss(b, k))
jit_terms = nnx.jit(lambda m, b, k: m.loss_terms(b, k))
jit_scores = nnx.jit(lambda m, u: m.scores(u))
jit_training_forward = nnx.jit(lambda m: m.forward(m.training_adjacency()))


def _model(ds, **overrides):
    return PGL(ds, dataclasses.replace(PGLConfig(embedding_size=D, knn_k=2), **overrides), rngs=nnx.Rngs(0))


def _np(x):
    return np.asarray(x, np.float64)


def _paths(model, kind) -> set[str]:
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, kind))}


# -- numpy references -----------------------------------------------------------------------


def _dense(rows, cols, values, n):
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(rows), np.asarray(cols)), _np(values))
    return a


def _a_sym(ds):
    u, n = ds.num_users, ds.num_users + ds.num_items
    a = np.zeros((n, n))
    for user, item in ds.train:
        a[user, u + item] = a[u + item, user] = 1.0
    deg = a.sum(1) + EPS
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _k_bin(features, k):
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    top = np.argsort(-(normed @ normed.T), axis=1)[:, :k]
    a = np.zeros((len(features),) * 2)
    a[np.repeat(np.arange(len(features)), k), top.ravel()] = 1.0
    deg = a.sum(1) + EPS
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _forward(model, a, mm):
    """The reference's ``forward(adj)`` in float64 with the model's parameters."""
    p = {name: _np(getattr(model, name)[...]) for name in _paths(model, nnx.Param)}

    def projected(role):
        x = p[f"{role}_emb"] @ p[f"{role}_trs_w"] + p[f"{role}_trs_b"]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    items = np.concatenate([projected("image"), projected("text")], 1)
    users = np.concatenate([p["user_image"], p["user_text"]], 1)
    h = items
    for _ in range(model.config.n_mm_layers):
        h = mm @ h
    layers = [np.concatenate([users, items])]
    for _ in range(model.config.n_ui_layers):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    return mean[: len(users)], mean[len(users) :] + h


def _bpr(u, pos, neg):
    return -np.mean(np.log(1.0 / (1.0 + np.exp(-(np.sum(u * pos, 1) - np.sum(u * neg, 1))))))


def _dropped(key, i, x, rate):
    """View ``i`` of the module docstring: torch's dropout with the mask of ``fold_in(key, i)``."""
    keep = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape))
    return np.where(keep, x / (1.0 - rate), 0.0)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_model(hand):
    # local_keep_ratio 0.5: int(6 * 0.5) = 3 of the 6 train edges (0.3 would keep int(1.8) = 1).
    return _model(hand, local_keep_ratio=0.5, reg_weight=0.5, dropout=0.5)


@pytest.fixture(scope="module")
def global_model(tiny):
    return PGL(tiny, PGLConfig(embedding_size=16, knn_k=3, mode="global"), rngs=nnx.Rngs(0))


# -- tests ----------------------------------------------------------------------------------


def test_parameter_count_matches_the_reference(tiny, hand_model):
    # The reference's count: two user tables U*d + per modality [raw table I*F + projection F*d + d]; no item ids.
    u, i = tiny.num_users, tiny.num_items
    expected = 2 * D * u + sum(i * f.shape[1] + f.shape[1] * D + D for f in tiny.features.values())
    assert _model(tiny).num_trainable_params() == expected
    u, i, d, fv, ft = 35_598, 18_357, 64, 4096, 384  # sports
    assert 2 * d * u + i * fv + fv * d + d + i * ft + ft * d + d == 87_082_752
    assert PGL.multimodal and PGL.uses_negatives and not hand_model.ranks_with_training_cache()


def test_state_kinds_and_no_gradient_to_constants(hand, hand_model):
    model = hand_model
    modal = {f"{r}_{part}" for r in ("image", "text") for part in ("emb", "trs_w", "trs_b")}
    assert _paths(model, nnx.Param) == {"user_image", "user_text"} | modal
    assert _paths(model, EpochSample) == {"sub_rows", "sub_cols", "sub_values"}
    constants = {"mm_idx", "mm_val", "mm_order", "full_rows", "full_cols", "full_values", "train_pairs"}
    assert _paths(model, Constant) == constants | _paths(model, EpochSample)
    assert _paths(model, ...) == _paths(model, nnx.Param) | _paths(model, Constant)
    # The trainer differentiates the nnx.Param split only: gradients exist for exactly the
    # parameters (each one non-zero), none for the Constant / EpochSample graphs.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(jnp.asarray(BATCH, jnp.int32), jax.random.key(0))))(params)
    assert {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(grads)} == _paths(model, nnx.Param)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    # The raw feature tables are trainable (freeze=False) but the item graph stays the one
    # of the RAW features: after an update of every parameter it is unchanged.
    trained = nnx.merge(graphdef, jax.tree.map(lambda p, g: p - 10.0 * g, params, grads), rest)
    assert not np.allclose(trained.image_emb[...], hand.features["image"])
    np.testing.assert_array_equal(trained.mm_val[...], model.mm_val[...])
    np.testing.assert_array_equal(trained.mm_idx[...], model.mm_idx[...])


def test_frozen_multimodal_item_graph_by_hand(hand, hand_model):
    image, text = _np(hand.features["image"]), _np(hand.features["text"])
    expected = 0.1 * _k_bin(image, 2) + 0.9 * _k_bin(text, 2)  # mm_image_weight 0.1
    got = _dense(np.repeat(np.arange(4), hand_model.mm_idx.shape[1]), np.ravel(hand_model.mm_idx[...]), np.ravel(hand_model.mm_val[...]), 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(expected[expected > 0].min(), 0.1 / (2 + EPS), rtol=1e-9)  # every K_bin entry 1 / (k + 1e-7)


def test_training_forward_and_every_loss_term_by_hand(hand, hand_model):
    model = hand_model
    assert model.num_kept_edges == 3
    model.pre_epoch(np.random.default_rng(5))
    rows, cols = np.asarray(model.sub_rows[...]), np.asarray(model.sub_cols[...])
    assert rows.shape == (6,)
    kept = sorted((int(r), int(c) - 3) for r, c in zip(rows, cols) if r < 3)
    assert len(set(kept)) == 3 and set(kept) <= {tuple(p) for p in hand.train.tolist()}
    # Re-normalised with the KEPT degrees, 1/sqrt((d'_u + eps)(d'_i + eps)), in both directions.
    deg_u, deg_i = np.bincount([u for u, _ in kept], minlength=3), np.bincount([i for _, i in kept], minlength=4)
    g = np.zeros((7, 7))
    for u, i in kept:
        g[u, 3 + i] = g[3 + i, u] = 1 / np.sqrt((deg_u[u] + EPS) * (deg_i[i] + EPS))
    np.testing.assert_allclose(_dense(rows, cols, model.sub_values[...], 7), g, rtol=1e-6)

    mm = 0.1 * _k_bin(_np(hand.features["image"]), 2) + 0.9 * _k_bin(_np(hand.features["text"]), 2)
    users, items = _forward(model, g, mm)
    got_u, got_i = jit_training_forward(model)
    np.testing.assert_allclose(got_u, users, **TOL)
    np.testing.assert_allclose(got_i, items, **TOL)

    key = jax.random.key(7)
    u, pos, neg = users[BATCH[0]], items[BATCH[1]], items[BATCH[2]]
    bpr = _bpr(u, pos, neg)
    # Four independent dropouts (rate 0.5) of the SAME embeddings, tau 0.2.
    cl = (np_info_nce(_dropped(key, 0, u, 0.5), _dropped(key, 1, u, 0.5), 0.2) + np_info_nce(_dropped(key, 2, pos, 0.5), _dropped(key, 3, pos, 0.5), 0.2)) / 2
    terms = jit_terms(model, jnp.asarray(BATCH, jnp.int32), key)
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["cl"]), cl, rtol=1e-5)
    np.testing.assert_allclose(float(jit_loss(model, jnp.asarray(BATCH, jnp.int32), key)), bpr + 0.5 * cl, rtol=1e-5)
    # The views are really redrawn: another key, another contrastive term (the BPR stays).
    other = jit_terms(model, jnp.asarray(BATCH, jnp.int32), jax.random.key(8))
    assert float(other["bpr"]) == float(terms["bpr"]) and abs(float(other["cl"]) - float(terms["cl"])) > 1e-4


def test_dropout_and_temperature_options(hand):
    # dropout 0: both views are the same embeddings, so InfoNCE(u, u) whatever the key; tau 0.5.
    model = _model(hand, local_keep_ratio=0.5, reg_weight=1.0, dropout=0.0, cl_temperature=0.5)
    users, items = (_np(x) for x in jit_training_forward(model))
    u, pos = users[BATCH[0]], items[BATCH[1]]
    expected = (np_info_nce(u, u, 0.5) + np_info_nce(pos, pos, 0.5)) / 2
    for seed in (0, 1):
        terms = jit_terms(model, jnp.asarray(BATCH, jnp.int32), jax.random.key(seed))
        np.testing.assert_allclose(float(terms["cl"]), expected, rtol=1e-5)
    assert abs(expected - (np_info_nce(u, u, 0.2) + np_info_nce(pos, pos, 0.2)) / 2) > 1e-2  # tau is not ignored


def test_reg_weight_zero_is_the_bpr_alone(hand, hand_model):
    # The reference's grid [0]: bpr + 0 * cl, computed as the BPR alone.
    model = _model(hand, local_keep_ratio=0.5)
    nnx.update(model, nnx.state(hand_model, nnx.Param))
    nnx.update(model, nnx.state(hand_model, EpochSample))
    batch, key = jnp.asarray(BATCH, jnp.int32), jax.random.key(7)
    terms = jit_terms(hand_model, batch, key)
    assert float(jit_loss(model, batch, key)) == pytest.approx(float(terms["bpr"]), rel=1e-6)
    assert float(terms["cl"]) > 0.1  # what reg_weight 0.5 adds in hand_model


def test_scores_use_the_full_graph_and_the_sample_only_the_loss(hand, hand_model):
    model = hand_model
    mm = 0.1 * _k_bin(_np(hand.features["image"]), 2) + 0.9 * _k_bin(_np(hand.features["text"]), 2)
    users, items = _forward(model, _a_sym(hand), mm)
    before = np.asarray(jit_scores(model, jnp.arange(3)))
    np.testing.assert_allclose(before, users @ items.T, **TOL)
    batch, losses = jnp.asarray(BATCH, jnp.int32), set()
    for seed in range(6):
        model.pre_epoch(np.random.default_rng(seed))
        np.testing.assert_array_equal(jit_scores(model, jnp.arange(3)), before)
        losses.add(round(float(jit_loss(model, batch, jax.random.key(0))), 6))
    assert len(losses) > 1


def test_pre_epoch_redraws_a_degree_sensitive_sample_of_fixed_shape(tiny, hand):
    model = _model(tiny)
    keep = int(576 * 0.3)  # the reference's int(E * 0.3)
    assert model.num_kept_edges == keep == 172
    pairs = np.asarray(model.train_pairs[...])
    weight = 1 / np.sqrt(np.bincount(pairs[:, 0])[pairs[:, 0]] * np.bincount(pairs[:, 1])[pairs[:, 1]])
    index = {tuple(p): e for e, p in enumerate(pairs.tolist())}
    rng, counts, samples = np.random.default_rng(0), np.zeros(len(pairs)), []
    for _ in range(40):
        model.pre_epoch(rng)
        rows, cols, values = (np.asarray(getattr(model, f"sub_{p}")[...]) for p in ("rows", "cols", "values"))
        assert rows.shape == cols.shape == values.shape == (2 * keep,)
        forward = rows < tiny.num_users
        counts[[index[(int(r), int(c) - tiny.num_users)] for r, c in zip(rows[forward], cols[forward])]] += 1
        samples.append(frozenset(zip(rows.tolist(), cols.tolist())))
    assert len(set(samples)) == 40  # a fresh sample every epoch
    # Degree-sensitive: the edges of largest 1/sqrt(d_u d_i) are kept more often than those of smallest.
    order = np.argsort(weight)
    assert counts[order[-100:]].mean() / 40 > counts[order[:100]].mean() / 40 + 0.1
    # local_keep_ratio is an option (a constant 0.3 in the reference).
    assert _model(tiny, local_keep_ratio=0.5).sub_rows.shape == (2 * 288,)
    with pytest.raises(ConfigError, match="keeps 0 of the 6"):
        _model(hand, local_keep_ratio=0.1)  # int(6 * 0.1) = 0


def test_principal_factors_equal_a_dense_svd_up_to_sign(tiny):
    block = normalized_user_item_block(tiny.train, tiny.num_users, tiny.num_items)
    dense_p, dense_s, dense_qt = np.linalg.svd(block.toarray())
    for solver in ("arpack", "dense"):
        p, s, q = principal_factors(block, 8, solver=solver)
        np.testing.assert_allclose(s, dense_s[:8], rtol=1e-10)
        signs = np.sign(np.sum(p * dense_p[:, :8], axis=0))
        np.testing.assert_allclose(p * signs, dense_p[:, :8], atol=1e-8)
        np.testing.assert_allclose(q * signs, dense_qt[:8].T, atol=1e-8)
    # The whole (U + I) square A_sym has these singular values, each twice.
    a = _a_sym(tiny)
    np.testing.assert_allclose(a[: tiny.num_users, tiny.num_users :], block.toarray(), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(a, compute_uv=False)[:16], np.repeat(dense_s[:8], 2), rtol=1e-10)


def test_global_subgraph_equals_the_dense_svd_reconstruction(tiny, global_model):
    # k = 16, n = 4: the 4 largest singular values times the 4 smallest of the 16 kept.
    a = _a_sym(tiny)
    u, s, vt = np.linalg.svd(a)
    g = u[:, :4] @ np.diag(s[:4] * s[12:16]) @ vt[:4]
    g = g * (np.abs(g) >= 1e-3)
    for solver in ("arpack", "dense"):
        sub = principal_subgraph(tiny.train, tiny.num_users, tiny.num_items, 16, solver=solver)
        got = _dense(sub.rows, sub.cols, sub.values, 100)
        np.testing.assert_array_equal(got != 0, g != 0)
        np.testing.assert_allclose(got, g, rtol=1e-6, atol=1e-9)
    # The model trains on it (a Constant: pre_epoch changes nothing) and ranks with A_sym.
    assert _paths(global_model, EpochSample) == set() and "train_pairs" not in _paths(global_model, Constant)
    before = np.asarray(global_model.sub_values[...])
    global_model.pre_epoch(np.random.default_rng(0))
    np.testing.assert_array_equal(global_model.sub_values[...], before)
    np.testing.assert_allclose(_dense(global_model.sub_rows[...], global_model.sub_cols[...], before, 100), g, rtol=1e-6, atol=1e-9)
    mm = 0.1 * _k_bin(_np(tiny.features["image"]), 3) + 0.9 * _k_bin(_np(tiny.features["text"]), 3)
    users, items = _forward(global_model, g, mm)
    batch = random_batch(tiny)
    b = np.asarray(batch)
    np.testing.assert_allclose(float(jit_loss(global_model, batch, jax.random.key(0))), _bpr(users[b[0]], items[b[1]], items[b[2]]), rtol=1e-5)
    users, items = _forward(global_model, a, mm)
    np.testing.assert_allclose(jit_scores(global_model, jnp.arange(5)), users[:5] @ items.T, **TOL)


def test_global_mode_refuses_an_ill_defined_reconstruction(hand):
    # int(12 / 4) = 3 is odd: a pair of equal singular values would be cut in two.
    with pytest.raises(ConfigError, match="embedding_size"):
        PGLConfig(mode="global", embedding_size=12)
    assert PGLConfig(mode="local", embedding_size=12).embedding_size == 12
    PGLConfig(mode="global", embedding_size=8)
    # hand's 3 x 4 block has rank 3: 6 non-zero singular values, fewer than k = 8.
    with pytest.raises(ConfigError, match="only 6 non-zero"):
        PGL(hand, PGLConfig(embedding_size=8, knn_k=2, mode="global"), rngs=nnx.Rngs(0))


def test_both_modalities_are_required():
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.raises(ConfigError, match="PGL needs both an image and a text"):
        PGL(text_only, PGLConfig(embedding_size=D), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("pgl", PGLConfig)
    grid = config["model_config"]
    assert (grid["dropout"], grid["reg_weight"], grid["mode"]) == ([0.2], [0.0], ["local"])
    assert (grid["knn_k"], grid["mm_image_weight"], grid["n_mm_layers"], grid["n_ui_layers"]) == (10, 0.1, 1, 2)
    assert config["train"]["lr_schedule"] == [0.96, 50] and config["train"]["valid_metric"] == "recall@20"
    assert config["mg"] == {"alpha1": 1.0, "alpha2": [0.1, 0.2, 0.3], "beta": 3}
