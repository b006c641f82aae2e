"""BM3: parameters, gradients, propagation by hand, the bootstrap quirks."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.models.bm3 import BM3, BM3Config
from helpers import positive_batch, packaged_config

D = 8


def _model(ds, **overrides):
    return BM3(ds, dataclasses.replace(BM3Config(embedding_size=D), **overrides), rngs=nnx.Rngs(0))


def _grads(model, batch, key):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Jitted: one compilation is cheaper than compiling every eager op of the backward pass.
    grad = jax.jit(jax.grad(lambda p, b, k: nnx.merge(graphdef, p, rest, copy=True).loss(b, k)))
    return params, grad(params, batch, key)


def test_parameter_count_matches_card(tiny):
    model = _model(tiny)
    u, i = tiny.num_users, tiny.num_items
    # The reference's count: d(U + I) + predictor (d^2 + d) + per modality [raw table I*F + projection F*d + d].
    expected = D * (u + i) + (D * D + D) + sum(i * f.shape[1] + f.shape[1] * D + D for f in tiny.features.values())
    assert model.num_trainable_params() == expected
    # On Amazon Sports' dimensions the same formula gives the reference's count.
    u, i, d, fv, ft = 35_598, 18_357, 64, 4096, 384
    assert d * (u + i) + d * d + d + i * fv + fv * d + d + i * ft + ft * d + d == 85_983_488


def test_raw_feature_tables_start_at_the_features_and_are_fine_tuned(tiny):
    model = _model(tiny)
    np.testing.assert_array_equal(np.asarray(model.image_emb[...]), tiny.features["image"])
    np.testing.assert_array_equal(np.asarray(model.text_emb[...]), tiny.features["text"])
    assert isinstance(model.image_emb, nnx.Param) and isinstance(model.text_emb, nnx.Param)


def _dense_a_sym(ds):
    n = ds.num_users + ds.num_items
    a = np.zeros((n, n))
    for u, i in ds.train:
        a[u, ds.num_users + i] = a[ds.num_users + i, u] = 1.0
    deg = a.sum(1) + 1e-7
    return a / np.sqrt(deg[:, None] * deg[None, :])


@pytest.mark.parametrize("n_layers", [1, 2])
def test_forward_and_scores_by_hand(hand, n_layers):
    model = _model(hand, n_layers=n_layers)
    a = _dense_a_sym(hand)
    # Degrees: users [2, 2, 2], items [2, 2, 1, 1]; e.g. A[u0, i0] = 1/sqrt(2*2) = 0.5.
    assert abs(a[0, 3] - 0.5) < 1e-6 and abs(a[1, 3 + 2] - 1 / np.sqrt(2)) < 1e-6
    e_u, e_i = np.asarray(model.users[...], np.float64), np.asarray(model.items[...], np.float64)
    x = np.concatenate([e_u, e_i])
    layers = [x]
    for _ in range(n_layers):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    u_g, i_g = mean[:3], mean[3:] + e_i  # id residual on the items
    got_u, got_i = model.propagated()
    # float32 propagation of O(1) numbers: 1e-5 relative is ample.
    np.testing.assert_allclose(got_u, u_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_i, i_g, rtol=1e-5, atol=1e-6)
    w, b = np.asarray(model.predictor_w[...]), np.asarray(model.predictor_b[...])
    expected = (u_g @ w + b) @ (i_g @ w + b).T
    np.testing.assert_allclose(model.scores(jnp.arange(3)), expected, rtol=1e-4, atol=1e-5)


def test_target_dropout_is_always_on_and_follows_the_key(tiny):
    model = _model(tiny, dropout=0.5)
    batch = positive_batch(tiny)
    same = [float(model.loss(batch, jax.random.key(7))) for _ in range(2)]
    assert same[0] == same[1]
    assert float(model.loss(batch, jax.random.key(8))) != same[0]
    # Without dropout the key has no effect.
    plain = _model(tiny, dropout=0.0)
    assert float(plain.loss(batch, jax.random.key(7))) == float(plain.loss(batch, jax.random.key(8)))


def test_target_dropout_is_inverted_and_shared_by_repeated_rows(tiny):
    model = _model(tiny, dropout=0.3)
    users, items = jnp.array([5, 2, 5, 0]), jnp.array([1, 1, 3, 7])
    masks = model._keep_masks(jax.random.key(0), users, items)
    assert len(masks) == 4 and all(m.shape == (4, D) for m in masks)  # users, items, text, image
    np.testing.assert_array_equal(masks[0][0], masks[0][2])  # user 5 twice: one mask row
    np.testing.assert_array_equal(masks[1][0], masks[1][1])  # item 1 twice
    out = np.asarray(model._target(jnp.ones((4, D)), masks[1]))
    np.testing.assert_array_equal(out == 0, ~np.asarray(masks[1]))
    np.testing.assert_allclose(out[out != 0], 1 / 0.7, rtol=1e-6)  # inverted scaling, float32
    everything = model._keep_masks(jax.random.key(1), jnp.arange(tiny.num_users), jnp.arange(tiny.num_items))
    dropped = 1.0 - np.mean(np.concatenate([np.asarray(m).ravel() for m in everything]))
    # (60 + 3 * 40) * 8 = 1440 Bernoulli(0.3) draws: std 0.012, so 0.06 is a 5-sigma band.
    assert abs(dropped - 0.3) < 0.06
    assert all(m is None for m in _model(tiny, dropout=0.0)._keep_masks(jax.random.key(0), users, items))


def test_targets_are_stop_gradient(tiny):
    # With an identity predictor, no dropout and only the two alignment terms, the loss is
    # 2 * (1 - c(u_g[u], i_g[i])); stop-gradient targets make its gradient that of a SINGLE
    # 1 - c(u_g[u], i_g[i]) (each term differentiates one side); without them it would be twice.
    model = _model(tiny, dropout=0.0, reg_weight=0.0, cl_weight=0.0)
    model.predictor_w[...] = jnp.eye(D)
    model.predictor_b[...] = jnp.zeros(D)
    batch = positive_batch(tiny)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def single(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        u_g, i_g = m.propagated()
        a, b = u_g[batch[0]], i_g[batch[1]]
        cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
        return 1.0 - jnp.mean(cos)

    _, got = _grads(model, batch, jax.random.key(0))
    want = jax.jit(jax.grad(single))(params)
    for name in ("users", "items"):
        assert float(jnp.abs(want[name][...]).max()) > 0
        # float32 gradients of the same O(1) expression computed two ways.
        np.testing.assert_allclose(got[name][...], want[name][...], rtol=1e-4, atol=1e-6)


def test_reg_is_non_squared_norm_of_all_nodes_over_num_items(tiny):
    batch, key = positive_batch(tiny), jax.random.key(0)
    with_reg, without = _model(tiny, reg_weight=0.5), _model(tiny, reg_weight=0.0)
    u_g, i_g = (np.asarray(t, np.float64) for t in with_reg.propagated())
    expected = 0.5 * (np.linalg.norm(u_g) + np.linalg.norm(i_g)) / tiny.num_items
    diff = float(with_reg.loss(batch, key)) - float(without.loss(batch, key))
    assert abs(diff - expected) < 1e-5


def test_modality_roles(tiny):
    # Same sizes as ``tiny`` (shared compilations); only the modalities differ.
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.warns(UserWarning, match="no 'image' modality"):
        model = BM3(text_only, BM3Config(embedding_size=D), rngs=nnx.Rngs(0))
    assert model.modalities == ("text",)
    assert model.num_trainable_params() == D * 100 + D * D + D + 40 * 64 + 64 * D + D
    assert np.isfinite(float(model.loss(positive_batch(text_only), jax.random.key(0))))
    other = make_synthetic(num_users=60, num_items=40, modalities={"audio": 64, "visual": 128}, seed=1)
    with pytest.raises(ValueError, match=r"BM3 needs an image and/or a text.*'audio', 'visual'"):
        BM3(other, BM3Config(embedding_size=D), rngs=nnx.Rngs(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both roles mapped, nothing ignored: no warning
        mapped = BM3(other, BM3Config(embedding_size=D, image_modality="visual", text_modality="audio"), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(mapped.image_emb[...]), other.features["visual"])


def test_yaml_maps_onto_the_config_and_trainer():


    config = packaged_config("bm3", BM3Config)
    grid = config["model_config"]
    assert (grid["n_layers"], grid["dropout"], grid["reg_weight"], grid["cl_weight"]) == ([1, 2], [0.3, 0.5], [0.1, 0.01], 2.0)
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
