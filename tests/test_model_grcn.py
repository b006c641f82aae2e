"""GRCN: parameter count, gradients, training, a hand-checked forward, quirks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.graph import bipartite_edges
from mirrorgrad_jax.models import TrainingCache
from mirrorgrad_jax.models.grcn import GRCN, GRCNConfig, dot_attention
from helpers import first_576_rows, random_batch

SMALL = {"embedding_size": 8, "latent_embedding": 6}


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=60, num_items=40, seed=0)


@pytest.fixture(scope="module")
def train_ds(tiny):
    return first_576_rows(tiny)


_batch = random_batch


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_call(graphdef, state, method, *args):
    return getattr(nnx.merge(graphdef, state, copy=True), method)(*args)


def _call(model, method, *args):
    """``model.<method>(*args)`` compiled once (eager dispatch of a graph net is slow)."""
    graphdef, state = nnx.split(model)
    return _jit_call(graphdef, state, method, *args)


@nnx.jit
def _training_loss(model, batch):
    return model.loss(batch, jax.random.key(0))


def card_param_count(num_users, num_items, feat_dims, d=64, c=64):
    """The reference's count: d N + sum_m (C U + C F_m + C) + M N."""
    n = num_users + num_items
    return d * n + sum(c * num_users + c * f + c for f in feat_dims.values()) + len(feat_dims) * n


def test_card_formula_gives_the_sports_count():
    assert card_param_count(35_598, 18_357, {"image": 4096, "text": 384}) == 8_404_422


def test_parameter_count_matches_card(tiny):
    model = GRCN(tiny, GRCNConfig(**SMALL), rngs=nnx.Rngs(0))
    dims = {m: f.shape[1] for m, f in tiny.features.items()}
    assert model.num_trainable_params() == card_param_count(tiny.num_users, tiny.num_items, dims, d=8, c=6)
    # The intended routing reuses the same parameters.
    routed = GRCN(tiny, GRCNConfig(**SMALL, routing="item_to_user"), rngs=nnx.Rngs(0))
    assert routed.num_trainable_params() == model.num_trainable_params()


# --- hand-checked forward on a 3-user, 4-item graph ------------------------------------


def _hand_dataset():
    rng = np.random.default_rng(5)
    return RecDataset(
        name="hand",
        num_users=3,
        num_items=4,
        train=np.array([[0, 0], [0, 1], [1, 1], [2, 3], [2, 1]]),
        valid=np.array([[0, 2]]),
        test=np.array([[1, 3]]),
        features={"image": rng.normal(size=(4, 5)).astype(np.float32), "text": rng.normal(size=(4, 3)).astype(np.float32)},
    )


def _rownorm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _masked_softmax_attention(x, mask):
    """Dense GAT of the reference: alpha[dst, src] = softmax over src in mask[dst] of <x_dst, x_src>."""
    logits = np.where(mask, x @ x.T, -np.inf)
    row_max = np.max(logits, axis=1, keepdims=True)
    unnorm = np.where(mask, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    alpha = unnorm / np.maximum(unnorm.sum(1, keepdims=True), 1e-300)
    return alpha, alpha @ x


def _dense_grcn(model, ds, routing):
    p = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    u, n = ds.num_users, ds.num_users + ds.num_items
    adj = np.zeros((n, n), bool)  # adj[dst, src]
    for user, item in ds.train:
        adj[u + item, user] = adj[user, u + item] = True
    item_to_user = np.zeros((n, n), bool)
    item_to_user[:u] = adj[:u]
    reps, alphas = [], []
    for m in ("image", "text"):
        branch = getattr(model, f"cgcn_{m}")
        f = np.asarray(ds.features[m], np.float64) @ p(branch.mlp_w) + p(branch.mlp_b)
        f = _rownorm(np.where(f > 0, f, 0.01 * f))
        pref = _rownorm(p(branch.pref))
        for _ in range(model.config.n_layers):
            if routing == "item_to_user":
                _, out = _masked_softmax_attention(np.concatenate([pref, f]), item_to_user)
                pref = _rownorm(pref + out[:u])
            else:
                pref = _rownorm(pref)
        x = np.concatenate([pref, f])
        alpha, out = _masked_softmax_attention(x, adj)
        reps.append(x + out)
        alphas.append(alpha)
    conf = p(model.conf)
    # Edge src -> dst: weight relu(max_m alpha_m[dst, src] * conf[src, m]).
    scaled = np.stack([alphas[k] * conf[None, :, k] for k in range(2)])
    weights = np.where(adj, np.maximum(scaled.max(0), 0.0), 0.0)
    x = _rownorm(p(model.id_emb))
    x1 = weights @ x
    x2 = weights @ x1
    return np.concatenate([x + x1 + x2] + reps, axis=1), weights


@pytest.mark.parametrize("routing", ["reference", "item_to_user"])
def test_forward_matches_dense_numpy_on_a_hand_graph(routing):
    ds = _hand_dataset()
    model = GRCN(ds, GRCNConfig(embedding_size=4, latent_embedding=3, routing=routing, stale_eval=False), rngs=nnx.Rngs(2))
    expected, weights = _dense_grcn(model, ds, routing)
    # Edge weights of a pair differ by direction: conf is read at each edge's source.
    assert not np.allclose(weights, weights.T)
    # float32 model against a float64 reference: 1e-5 relative, 1e-6 absolute.
    np.testing.assert_allclose(_call(model, "representation"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_call(model, "scores", jnp.arange(3)), expected[:3] @ expected[3:].T, rtol=1e-5, atol=1e-6)


def test_reference_routing_is_a_no_op():
    ds = _hand_dataset()
    model = GRCN(ds, GRCNConfig(embedding_size=4, latent_embedding=3), rngs=nnx.Rngs(2))
    # The reference's routing GAT runs on the one-directional user -> item edges:
    # users receive no message, so the user rows of its output are exactly zero.
    senders, receivers = bipartite_edges(ds.train, ds.num_users, bidirectional=False)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)), jnp.float32)
    out, _ = dot_attention(x, jnp.asarray(senders), jnp.asarray(receivers))
    np.testing.assert_array_equal(out[: ds.num_users], 0.0)
    # Hence three iterations give the representation of zero iterations (only re-normalising).
    no_loop = GRCN(ds, GRCNConfig(embedding_size=4, latent_embedding=3, n_layers=0), rngs=nnx.Rngs(2))
    np.testing.assert_allclose(_call(model, "representation"), _call(no_loop, "representation"), rtol=1e-6, atol=1e-7)
    # The intended routing does move the user preferences.
    routed = GRCN(ds, GRCNConfig(embedding_size=4, latent_embedding=3, routing="item_to_user"), rngs=nnx.Rngs(2))
    assert not np.allclose(_call(routed, "representation"), _call(model, "representation"), atol=1e-3)


def test_stale_eval_uses_the_cached_training_representation(tiny):
    batch = _batch(tiny)
    for stale in (True, False):
        model = GRCN(tiny, GRCNConfig(**SMALL, stale_eval=stale), rngs=nnx.Rngs(0))
        assert isinstance(model.cache, TrainingCache)
        np.testing.assert_array_equal(model.cache[...], 0.0)
        _training_loss(model, batch)  # nnx.jit writes the cache back into the model
        cached = np.asarray(model.cache[...])
        np.testing.assert_allclose(cached, _call(model, "representation"), rtol=1e-5, atol=1e-6)
        model.id_emb[...] = model.id_emb[...] * 2.0 + 0.1  # a parameter change
        fresh = np.asarray(_call(model, "representation"))
        got = np.asarray(_call(model, "scores", jnp.arange(4)))
        if stale:
            np.testing.assert_allclose(got, cached[:4] @ cached[tiny.num_users :].T, rtol=1e-5, atol=1e-6)
            assert not np.allclose(got, fresh[:4] @ fresh[tiny.num_users :].T)
        else:
            np.testing.assert_allclose(got, fresh[:4] @ fresh[tiny.num_users :].T, rtol=1e-5, atol=1e-6)


def test_regulariser_matches_the_card(tiny):
    batch = _batch(tiny)
    models = [GRCN(tiny, GRCNConfig(**SMALL, reg_weight=w), rngs=nnx.Rngs(0)) for w in (0.0, 0.1)]
    low, high = (_training_loss(m, batch) for m in models)
    p = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    m = models[0]
    u = np.asarray(batch[0])
    users2 = np.repeat(u, 2)
    items2 = np.stack([np.asarray(batch[1]), np.asarray(batch[2])], 1).reshape(-1) + tiny.num_users
    id_emb = p(m.id_emb)
    reg = np.mean(id_emb[users2] ** 2 + id_emb[items2] ** 2) + np.mean(p(m.cgcn_image.pref) ** 2)
    reg += np.mean(p(m.cgcn_image.pref)[users2] ** 2) + np.mean(p(m.cgcn_text.pref)[users2] ** 2)
    np.testing.assert_allclose(float(high) - float(low), 0.1 * reg, rtol=1e-4)


def test_single_modality_dataset_works():
    ds = make_synthetic(num_users=30, num_items=20, modalities={"text": 7}, seed=1)
    model = GRCN(ds, GRCNConfig(**SMALL), rngs=nnx.Rngs(0))
    assert model.conf[...].shape == (50, 1)
    assert model.cache[...].shape == (50, 8 + 6)
