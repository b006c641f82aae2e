"""MVGAE: parameters, frozen tensors, the loss by hand, the item-index bug, the KL weight, stale eval."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.models import Constant, FrozenRandom, TrainingCache, TrainingSetup, check_ready_to_rank
from mirrorgrad_jax.models.mvgae import MVGAE, MVGAEConfig
from helpers import jit_loss, jit_scores, value_and_grad_constants_fixed, packaged_config

D, L = 8, 16  # embedding_size, latent_dim
ROLES = ("image", "text", "collab")
# The parameters one encoder creates with n_layers = 1 (g2 and conv2 join with n_layers = 2).
ENCODER_PARAMS = {f"{n}_{p}" for n in ("mlp", "conv1", "g1", "conv4", "lin4", "g4", "conv5", "lin5", "g5") for p in "wb"}


def _model(ds, **overrides):
    return MVGAE(ds, dataclasses.replace(MVGAEConfig(embedding_size=D, latent_dim=L), **overrides), rngs=nnx.Rngs(0))


def _np(x):
    return np.asarray(x, np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _rownorm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _leaky(x):
    return np.where(x > 0, x, 0.01 * x)


def _mean_operator(ds):
    """Dense PyG mean aggregation over the bidirectional train edges plus a self-loop per node."""
    n = ds.num_users + ds.num_items
    m = np.eye(n)
    for u, i in ds.train:
        m[u, ds.num_users + i] = m[ds.num_users + i, u] = 1.0
    return m / m.sum(1, keepdims=True)


def _encoder_by_hand(enc, mean):
    p = {name: _np(getattr(enc, name)[...]) for name in ENCODER_PARAMS}
    lin = lambda name, x: x @ p[f"{name}_w"] + p[f"{name}_b"]  # noqa: E731
    conv = lambda layer, x: _rownorm(mean @ (x @ p[f"conv{layer}_w"]) + p[f"conv{layer}_b"])  # noqa: E731
    x = _rownorm(np.concatenate([_np(enc.pref[...]), lin("mlp", _np(enc.features[...]))]))
    x = _leaky(lin("g1", _leaky(conv(1, x))))
    mu = lin("g4", _leaky(conv(4, x))) + _leaky(lin("lin4", x))
    logvar = lin("g5", _leaky(conv(5, x))) + _leaky(lin("lin5", x))
    return mu, logvar


def _poe(mus, logvars):
    t = 1 / (np.exp(logvars) + 1e-8)
    return np.sum(mus * t, 0) / np.sum(t, 0), np.log(1 / np.sum(t, 0))


def _recon_by_hand(z, users, pos, neg, offset):
    s = _sigmoid(z)
    pos_score = _sigmoid(np.sum(s[users] * s[pos + offset], 1))
    neg_score = _sigmoid(np.max(s[users] @ s[neg + offset].T, axis=1))  # max over ALL batch negatives
    return -np.sum(np.log2(_sigmoid(pos_score - neg_score)))


def _kl_by_hand(mu, logvar):
    lv = np.minimum(logvar, 10)
    return -0.5 * np.mean(np.sum(1 + lv - mu**2 - np.exp(lv), 1))


def _encoder_param_count(f, latent, d, n_layers):
    return f * latent + latent + latent * d + d + (d * d + d) * (7 + 2 * (n_layers == 2))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_parameter_count_matches_the_card_less_the_unused_modules(hand, n_layers):
    model = _model(hand, n_layers=n_layers)
    widths = [hand.features["image"].shape[1], hand.features["text"].shape[1], D]  # collab width = d
    assert model.num_trainable_params() == sum(_encoder_param_count(f, L, D, n_layers) for f in widths)
    # Sports (F = 4096, 384, 64; L = 128; d = 64): 694,144 here; the reference registers 756,352
    # because it also creates lin1 (output discarded), conv2, lin2, g2 (unused with one layer).
    ours = sum(_encoder_param_count(f, 128, 64, 1) for f in (4096, 384, 64))
    unused = 3 * ((128 * 64 + 64) + 3 * (64 * 64 + 64))
    assert ours == 694_144 and ours + unused == 756_352


def test_frozen_tensors_are_constants_with_reference_initialisers(tiny):
    model = _model(tiny)
    params = nnx.state(model, nnx.Param)
    for role in ROLES:
        enc = getattr(model, f"{role}_gcn")
        assert set(params[f"{role}_gcn"].keys()) == ENCODER_PARAMS
        # Random and never trained: FrozenRandom (checkpoints keep it); features: a rebuildable Constant.
        assert isinstance(enc.pref, FrozenRandom)
        assert isinstance(enc.features, FrozenRandom) == (role == "collab") and isinstance(enc.features, Constant)
        assert enc.pref.shape == (tiny.num_users, L)
        # PyG uniform(in_channels) biases of the convs, torch-default Linear biases.
        assert np.abs(enc.conv1_b[...]).max() <= 1 / np.sqrt(L) and np.abs(enc.g4_b[...]).max() <= 1 / np.sqrt(D)
    np.testing.assert_array_equal(model.image_gcn.features[...], tiny.features["image"])
    collab = np.asarray(model.collab_gcn.features[...])
    assert collab.shape == (tiny.num_items, D)
    # xavier-normal: std sqrt(2 / (fan_in + fan_out)); 960 draws of the preference table.
    pref = np.asarray(model.image_gcn.pref[...])
    assert abs(pref.std() / np.sqrt(2 / (tiny.num_users + L)) - 1) < 0.15
    assert abs(collab.std() / np.sqrt(2 / (tiny.num_items + D)) - 1) < 0.25
    assert isinstance(model.cache, TrainingCache)


def test_loss_by_hand_and_every_parameter_gets_a_gradient(hand):
    # Conv dropout off so the forward is deterministic apart from the reparameterisation noise,
    # which is taken from the model with the key split the loss makes (helpers use key 0).
    model = _model(hand, conv_dropout=0.0, kl_weight=0.5)
    batch = np.array([[0, 1, 2, 0], [1, 2, 3, 0], [3, 0, 1, 2]])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, grads = value_and_grad_constants_fixed(graphdef, params, rest, jnp.asarray(batch, jnp.int32))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0.0, f"no gradient reaches {jax.tree_util.keystr(path)}"
    # Frozen tensors are not parameters, so the trainer never differentiates or updates them.
    frozen = {k for role in ROLES for k in nnx.state(getattr(model, f"{role}_gcn"), Constant).keys()}
    assert frozen == {"pref", "features"}

    mean = _mean_operator(hand)
    codes = {role: _encoder_by_hand(getattr(model, f"{role}_gcn"), mean) for role in ROLES}
    mu, lv = _poe(np.stack([codes["image"][0], codes["text"][0]]), np.stack([codes["image"][1], codes["text"][1]]))
    codes["pd"] = _poe(np.stack([mu, codes["collab"][0]]), np.stack([lv, codes["collab"][1]]))
    _, key_noise = jax.random.split(jax.random.key(0))
    noise = _np(model.reparameterisation_noise(key_noise))
    expected = 0.0
    for (mu, lv), eps in zip([codes[r] for r in ("pd", "image", "text", "collab")], noise):
        z = mu + 0.1 * eps * np.exp(0.5 * np.minimum(lv, 10))
        expected += _recon_by_hand(z, *batch, offset=0) + 0.5 * _kl_by_hand(mu, lv)
    # float32 through three encoders, a PoE and four sigmoid decoders: 1e-5 relative.
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

    # Evaluation without the stale cache: sigmoid(pd_mu), no dropout, no noise.
    eval_model = _model(hand, conv_dropout=0.0, stale_eval=False)
    nnx.update(eval_model, nnx.state(model, nnx.Param))
    rep = _sigmoid(codes["pd"][0])
    np.testing.assert_allclose(jit_scores(eval_model, jnp.arange(3)), rep[:3] @ rep[3:].T, rtol=1e-5)
    assert not eval_model.ranks_with_training_cache()


_recon_value_and_grad = nnx.jit(
    lambda model, z, batch: jax.value_and_grad(lambda z: model.reconstruction_loss(z, batch[0], batch[1], batch[2]))(z)
)


def test_item_ids_index_user_rows_unless_offset(hand):
    z = jnp.asarray(np.random.default_rng(0).normal(size=(7, D)), jnp.float32)
    batch = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    faithful = _model(hand)
    corrected = _model(hand, offset_item_ids=True)
    value_f, grad_f = _recon_value_and_grad(faithful, z, jnp.asarray(batch, jnp.int32))
    value_c, grad_c = _recon_value_and_grad(corrected, z, jnp.asarray(batch, jnp.int32))
    np.testing.assert_allclose(float(value_f), _recon_by_hand(_np(z), *batch, offset=0), rtol=1e-5)
    np.testing.assert_allclose(float(value_c), _recon_by_hand(_np(z), *batch, offset=3), rtol=1e-5)
    # Faithful (the reference's bug): only USER rows of z are read, so the item rows that
    # ranking uses get no training signal. Corrected: item ids are rows U + id.
    assert float(jnp.abs(grad_f[3:]).max()) == 0.0 and float(jnp.abs(grad_f[:3]).max()) > 0.0
    assert float(jnp.abs(grad_c[3:]).max()) > 0.0


def test_kl_weight_resolution_with_mirror_gradient():
    faithful = MVGAEConfig(kl_weight=0.1)
    resolve = lambda config, on: MVGAE.config_for_training(config, TrainingSetup(mg_enabled=on, mg_beta=3))
    # MG on: the reference's `beta` key is overwritten by MG's beta.
    resolved = resolve(faithful, True)
    assert resolved.kl_weight == 3.0 and isinstance(resolved.kl_weight, float) and isinstance(resolved, MVGAEConfig)
    assert dataclasses.replace(resolved, kl_weight=0.1) == faithful  # nothing else changes
    assert resolve(resolved, True) == resolved  # idempotent
    # MG off (--not_mg): the grid value applies.
    assert resolve(faithful, False) is faithful
    # The corrected behaviour keeps kl_weight whatever MG does.
    independent = MVGAEConfig(kl_weight=0.1, kl_weight_from_mg_beta=False)
    assert resolve(independent, True).kl_weight == 0.1
    # The earlier spelling on the config still answers the same.
    assert faithful.for_training(mg_enabled=True, mg_beta=3) == resolved


def test_stale_evaluation_uses_the_training_forward_with_dropout(hand):
    model = _model(hand)  # conv_dropout 0.1, stale_eval on
    assert model.ranks_with_training_cache()
    with pytest.raises(ValueError, match="cache was never filled"):
        check_ready_to_rank(model)  # the cache starts at zeros
    batch = jnp.asarray([[0, 1, 2], [1, 2, 3], [3, 0, 1]], jnp.int32)
    loss = float(jit_loss(model, batch, jax.random.key(1)))
    assert np.isfinite(loss)
    check_ready_to_rank(model)
    cache = np.asarray(model.cache[...])
    before = np.asarray(jit_scores(model, jnp.arange(3)))
    np.testing.assert_allclose(before, cache[:3] @ cache[3:].T, rtol=1e-6)
    # Parameters move, the ranking does not (until the next training forward).
    model.image_gcn.mlp_w[...] = model.image_gcn.mlp_w[...] * 3.0 + 0.1
    np.testing.assert_array_equal(jit_scores(model, jnp.arange(3)), before)
    # The cache was computed in training mode: conv dropout differs from an eval-mode recompute
    # with the same parameters.
    model.image_gcn.mlp_w[...] = (model.image_gcn.mlp_w[...] - 0.1) / 3.0
    recompute = _model(hand, conv_dropout=0.0, stale_eval=False)  # eval mode: no dropout whatever the rate
    nnx.update(recompute, nnx.state(model, nnx.Param))
    assert np.abs(np.asarray(jit_scores(recompute, jnp.arange(3))) - before).max() > 1e-4
    # A different key: new dropout masks and noise.
    assert float(jit_loss(model, batch, jax.random.key(2))) != loss


def test_needs_both_image_and_text(tiny):
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.raises(ValueError, match=r"MVGAE needs both an image and a text.*image_modality='image'.*\['text'\]"):
        MVGAE(text_only, MVGAEConfig(embedding_size=D, latent_dim=L), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("mvgae", MVGAEConfig)
    grid = config["model_config"]
    assert grid["kl_weight"] == [0.01, 0.1, 1.0] and grid["kl_weight_from_mg_beta"] is True
    assert grid["offset_item_ids"] is False and grid["stale_eval"] is True and grid["n_layers"] == 1
    assert config["train"]["learning_rate"] == [1e-4, 1e-3, 1e-2, 0.1]
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3] and config["mg"]["beta"] == 3
