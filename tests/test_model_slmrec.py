"""SLMRec (FAC): parameter count, gradients, A_pre propagation and the loss by hand, stale evaluation, training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.models import Constant, TrainingCache, get_model
from mirrorgrad_jax.models.slmrec import SLMRec, SLMRecConfig
from mirrorgrad_jax.train import TrainConfig
from helpers import random_batch

D = 8


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=60, num_items=40, seed=0)


@pytest.fixture(scope="module")
def hand():
    """3 users, 4 items; train pairs (0,0), (0,1), (1,1), (2,3); item 2 has no train edge."""
    rng = np.random.default_rng(7)
    return RecDataset(
        name="hand",
        num_users=3,
        num_items=4,
        train=np.array([[0, 0], [0, 1], [1, 1], [2, 3]], np.int32),
        valid=np.array([[1, 0]], np.int32),
        test=np.array([[2, 2]], np.int32),
        features={"image": rng.normal(size=(4, 5)).astype(np.float32), "text": rng.normal(size=(4, 3)).astype(np.float32)},
    )


def _model(ds, **kw):
    return SLMRec(ds, SLMRecConfig(**{"embedding_size": D, "ssl_alpha": 0.5, **kw}), rngs=nnx.Rngs(0))


_batch = random_batch


def test_registered_and_parameter_count_matches_card(tiny):
    assert get_model("slmrec") is SLMRec
    model = _model(tiny)
    d, fv, ft = D, tiny.features["image"].shape[1], tiny.features["text"].shape[1]
    # Card 3.5: E_u, E_i; v_dense, t_dense; Lin_u, Lin_i (3d -> d); g_i_iv, g_v_iv, g_iv_iva (d -> d);
    # g_iva_ivat, g_t_ivat (d -> d/2). The unused g_a_iva (d -> d) is not created.
    card = (tiny.num_users + tiny.num_items) * d + (fv + 1) * d + (ft + 1) * d + 2 * (3 * d + 1) * d + 3 * (d + 1) * d + 2 * (d + 1) * (d // 2)
    assert model.num_trainable_params() == card
    # Sports dims (U=35,598, I=18,357, Fv=4096, Ft=384, d=64): card 3,785,472 counts g_a_iva (4,160).
    sports = lambda d: (35598 + 18357) * d + 4097 * d + 385 * d + 2 * (3 * d + 1) * d + 3 * (d + 1) * d + 2 * (d + 1) * (d // 2)
    assert sports(64) + 65 * 64 == 3_785_472


def _dense_a_pre(ds):
    n = ds.num_users + ds.num_items
    a = np.zeros((n, n))
    for u, i in ds.train:
        a[u, ds.num_users + i] = a[ds.num_users + i, u] = 1.0
    d = a.sum(1) + 1e-8
    return a / np.sqrt(np.outer(d, d))


def _linear(layer, x):
    return x @ np.asarray(layer.weight[...], np.float64) + np.asarray(layer.bias[...], np.float64)


def _ce_diag(logits):
    m = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
    return np.mean(lse - np.diag(logits))


def _forward_by_hand(model, ds):
    """Three separate dense LightGCN passes (float64), fused by concatenation."""
    a = _dense_a_pre(ds)
    rn = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    e_u = np.asarray(model.user_embedding[...], np.float64)
    inputs = [
        np.asarray(model.item_embedding[...], np.float64),
        _linear(model.v_dense, rn(ds.features["image"].astype(np.float64))),
        _linear(model.t_dense, rn(ds.features["text"].astype(np.float64))),
    ]
    outs = []
    for items in inputs:
        x = np.concatenate([e_u, items])
        layers = [x]
        for _ in range(model.config.n_layers):
            layers.append(a @ layers[-1])
        outs.append(np.mean(layers, axis=0))
    u = ds.num_users
    users = _linear(model.user_fusion, np.concatenate([o[:u] for o in outs], 1))
    items = _linear(model.item_fusion, np.concatenate([o[u:] for o in outs], 1))
    return users, items, [o[u:] for o in outs]


def test_a_pre_and_three_lightgcn_passes_by_hand(hand):
    model = _model(hand)
    # A_pre on the 3x4 graph: degrees users [2, 1, 1], items [1, 2, 0, 1]; value 1/sqrt((d_u+1e-8)(d_i+1e-8)).
    dense = np.zeros((7, 7))
    dense[np.asarray(model.adj_rows[...]), np.asarray(model.adj_cols[...])] = np.asarray(model.adj_values[...])
    expected = np.zeros((7, 7))
    for u, i, du, di in [(0, 0, 2, 1), (0, 1, 2, 2), (1, 1, 1, 2), (2, 3, 1, 1)]:
        expected[u, 3 + i] = expected[3 + i, u] = 1 / np.sqrt((du + 1e-8) * (di + 1e-8))
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    users, items, branches = _forward_by_hand(model, hand)
    got_users, got_items, got_branches = model._forward()
    # float32 forward vs float64 reference on O(1) values: 1e-5 absolute is ~100 ulps.
    np.testing.assert_allclose(got_users, users, atol=1e-5)
    np.testing.assert_allclose(got_items, items, atol=1e-5)
    np.testing.assert_allclose(got_branches, np.concatenate(branches, 1), atol=1e-5)
    # Item 2 has no edge: every layer after the input is zero, so its branches are input / 4.
    np.testing.assert_allclose(got_branches[2, :D], np.asarray(model.item_embedding[...])[2] / 4, atol=1e-6)


def test_loss_by_hand_with_duplicate_positive_as_false_negative(hand):
    model = _model(hand, temp=0.2, ssl_temp=0.5, ssl_alpha=0.3)
    # Item 1 is the positive of rows 1 and 2: each is a negative for the other (kept, as the reference).
    batch = jnp.asarray([[0, 0, 1, 2], [0, 1, 1, 3], [2, 2, 0, 0]], jnp.int32)
    users, items, (i_i, v_i, t_i) = _forward_by_hand(model, hand)
    rn = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    u, p = rn(users[[0, 0, 1, 2]]), rn(items[[0, 1, 1, 3]])
    main = _ce_diag(u @ p.T / 0.2)
    pos = [0, 1, 1, 3]
    a = _linear(model.g_i_iv, i_i[pos])
    b = _linear(model.g_v_iv, v_i[pos])
    c = _linear(model.g_iva_ivat, _linear(model.g_iv_iva, a))
    e = _linear(model.g_t_ivat, t_i[pos])
    # FAC heads are NOT normalised.
    expected = main + 0.3 * (_ce_diag(a @ b.T / 0.5) + _ce_diag(c @ e.T / 0.5))
    got = float(model.loss(batch, jax.random.key(0)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 vs float64 on an O(1) loss
    # The negatives row is ignored.
    other = batch.at[2].set(jnp.asarray([1, 3, 2, 2]))
    assert float(model.loss(other, jax.random.key(1))) == got


def test_stale_eval_uses_the_training_cache(hand):
    batch = jnp.asarray([[0, 1, 2], [0, 1, 3], [2, 2, 0]], jnp.int32)
    stale = _model(hand)
    fresh = _model(hand, stale_eval=False)
    users = jnp.arange(3)
    # Before any training forward the cache is zero.
    assert float(jnp.abs(stale.scores(users)).max()) == 0.0
    stale.loss(batch, jax.random.key(0))
    fresh.loss(batch, jax.random.key(0))
    all_users, all_items, _ = stale._forward()
    # No sigmoid: the scores are the raw dot products (the reference's sigmoid is monotone).
    np.testing.assert_allclose(stale.scores(users), all_users @ all_items.T, rtol=1e-6)
    np.testing.assert_allclose(stale.scores(users), fresh.scores(users), rtol=1e-6)
    for m in (stale, fresh):
        m.user_embedding[...] = m.user_embedding[...] + 0.5
    before = np.asarray(all_users @ all_items.T)
    np.testing.assert_array_equal(stale.scores(users), before)
    recomputed = fresh._forward()
    np.testing.assert_allclose(fresh.scores(users), recomputed[0] @ recomputed[1].T, rtol=1e-6)
    assert not np.allclose(fresh.scores(users), before)


def test_cache_comes_out_of_the_trainers_jitted_loss(tiny):
    # The trainer differentiates a merged copy and returns nnx.state(model, TrainingCache) as aux.
    model = _model(tiny)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, batch, key):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return m.loss(batch, key), nnx.state(m, TrainingCache)

    (_, cache), _ = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, _batch(tiny), jax.random.key(0))
    nnx.update(model, cache)
    all_users, all_items, _ = model._forward()
    np.testing.assert_allclose(model.cached_users[...], all_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.cached_items[...], all_items, rtol=1e-5, atol=1e-6)


def test_features_are_row_normalised_constants(tiny):
    model = _model(tiny)
    for name in ("image", "text"):
        assert isinstance(getattr(model, name), Constant)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(getattr(model, name)[...]), axis=1), 1.0, rtol=1e-5)


def test_missing_modality_is_refused():
    ds = make_synthetic(num_users=30, num_items=20, modalities={"image": 16}, seed=1)
    with pytest.raises(ValueError, match=r"has no text_modality='text': its modalities are \['image'\]"):
        SLMRec(ds, SLMRecConfig(embedding_size=D), rngs=nnx.Rngs(0))


def test_other_modality_fills_the_image_role_with_a_warning():
    ds = make_synthetic(num_users=30, num_items=20, modalities={"meta": 8, "text": 16}, seed=1)
    with pytest.warns(UserWarning, match="using 'meta' in the image role"):
        model = SLMRec(ds, SLMRecConfig(embedding_size=D), rngs=nnx.Rngs(0))
    assert model.image[...].shape == (20, 8)
    two = make_synthetic(num_users=30, num_items=20, modalities={"meta": 8, "audio": 4, "text": 16}, seed=1)
    with pytest.raises(ValueError, match=r"has no image_modality='image'.*set image_modality"):
        SLMRec(two, SLMRecConfig(embedding_size=D), rngs=nnx.Rngs(0))
    model = SLMRec(two, SLMRecConfig(embedding_size=D, image_modality="audio"), rngs=nnx.Rngs(0))
    assert model.image[...].shape == (20, 4)


def test_yaml_maps_onto_the_config_and_trainer():
    import pathlib

    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "models" / "configs" / "slmrec.yaml"
    config = yaml.safe_load(path.read_text())
    assert config["model"] == "slmrec"
    fields = {f.name for f in dataclasses.fields(SLMRecConfig)}
    assert set(config["model_config"]) <= fields and "reg" not in config["model_config"]
    assert set(config["train"]) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert config["train"]["weight_decay"] == 1e-4
    assert config["train"]["learning_rate"] == [1e-4, 1e-3, 0.01, 0.1]
    assert config["model_config"]["ssl_temp"] == [0.1, 0.2, 0.5, 1.0]
    assert config["model_config"]["ssl_alpha"] == [0.01, 0.05, 0.1, 0.5, 1.0]
