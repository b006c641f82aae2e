"""MMGCN: parameter count, gradients, training, a hand-checked forward, quirks."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.models import TrainingCache
from mirrorgrad_jax.models.mmgcn import MMGCN, MMGCNConfig
from helpers import first_576_rows, random_batch
from helpers import value_and_grad_constants_fixed as _value_and_grad

SMALL = {"embedding_size": 8, "image_latent_dim": 16}


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=60, num_items=40, seed=0)


@pytest.fixture(scope="module")
def train_ds(tiny):
    return first_576_rows(tiny)


_batch = random_batch


def _loss_and_grads(model, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return _value_and_grad(graphdef, params, rest, batch)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_call(graphdef, state, method, *args):
    return getattr(nnx.merge(graphdef, state, copy=True), method)(*args)


@nnx.jit
def _training_loss(model, batch):
    return model.loss(batch, jax.random.key(0))


def _call(model, method, *args):
    """``model.<method>(*args)`` compiled once (eager dispatch of a graph net is slow)."""
    graphdef, state = nnx.split(model)
    return _jit_call(graphdef, state, method, *args)


def card_param_count(num_users, num_items, feat_dims, d=64, latent=256, concat=True, frozen=True):
    """The reference's count: image MLP + per-branch conv/lin/gate layers (+ frozen tensors if trained)."""
    total = 0
    for name, f in feat_dims.items():
        width = latent if name == "image" else f
        if name == "image":
            total += f * latent + latent
        gate_in = (width + d) if concat else width
        total += width * width + (width * d + d) + (gate_in * d + d)
        gate_in = 2 * d if concat else d
        total += 2 * (d * d + (d * d + d) + (gate_in * d + d))
        if not frozen:
            total += num_users * width
    if not frozen:
        total += (num_users + num_items) * d
    return total


def test_card_formula_gives_the_sports_count():
    assert card_param_count(35_598, 18_357, {"image": 4096, "text": 384}) == 1_418_240


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
def test_parameter_count_matches_card(tiny, concat, frozen):
    model = MMGCN(tiny, MMGCNConfig(**SMALL, concat=concat, frozen_random_tensors=frozen), rngs=nnx.Rngs(0))
    dims = {m: f.shape[1] for m, f in tiny.features.items()}
    expected = card_param_count(tiny.num_users, tiny.num_items, dims, d=8, latent=16, concat=concat, frozen=frozen)
    assert model.num_trainable_params() == expected


def test_regulariser_is_a_constant_with_zero_gradient(tiny):
    batch = _batch(tiny)
    low = MMGCN(tiny, MMGCNConfig(**SMALL, reg_weight=0.0), rngs=nnx.Rngs(0))
    high = MMGCN(tiny, MMGCNConfig(**SMALL, reg_weight=0.1), rngs=nnx.Rngs(0))
    loss_low, grads_low = _loss_and_grads(low, batch)
    loss_high, grads_high = _loss_and_grads(high, batch)
    # The loss value moves by reg_weight * reg ...
    id_emb = np.asarray(low.id_emb[...], np.float64)
    u, pos, neg = (np.asarray(batch[0]), np.asarray(batch[1]) + tiny.num_users, np.asarray(batch[2]) + tiny.num_users)
    users2, items2 = np.repeat(u, 2), np.stack([pos, neg], 1).reshape(-1)
    reg = np.mean(id_emb[users2] ** 2 + id_emb[items2] ** 2) + np.mean(np.asarray(low.gcn_image.pref[...], np.float64) ** 2)
    np.testing.assert_allclose(float(loss_high) - float(loss_low), 0.1 * reg, rtol=1e-4)
    # ... but the gradient not at all (bit-identical).
    for a, b in zip(jax.tree.leaves(grads_low), jax.tree.leaves(grads_high)):
        np.testing.assert_array_equal(a, b)
    # With trainable tensors (the intended model) the regulariser acts.
    trainable = MMGCN(tiny, MMGCNConfig(**SMALL, reg_weight=0.1, frozen_random_tensors=False), rngs=nnx.Rngs(0))
    _, grads = _loss_and_grads(trainable, batch)
    assert float(jnp.abs(grads["id_emb"][...]).max()) > 0 and float(jnp.abs(grads["gcn_text"]["pref"][...]).max()) > 0


def test_frozen_tensors_do_not_change_under_optimisation(tiny):
    model = MMGCN(tiny, MMGCNConfig(**SMALL, reg_weight=0.1), rngs=nnx.Rngs(0))
    before = {k: np.asarray(v) for k, v in (("id", model.id_emb[...]), ("pv", model.gcn_image.pref[...]), ("pt", model.gcn_text.pref[...]))}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(tiny)
    sgd = jax.jit(lambda p, g: jax.tree.map(lambda a, b: a - 0.5 * b, p, g))
    losses = []
    for _ in range(5):
        loss, grads = _value_and_grad(graphdef, params, rest, batch)
        params = sgd(params, grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    trained = nnx.merge(graphdef, params, rest)
    np.testing.assert_array_equal(trained.id_emb[...], before["id"])
    np.testing.assert_array_equal(trained.gcn_image.pref[...], before["pv"])
    np.testing.assert_array_equal(trained.gcn_text.pref[...], before["pt"])


# --- hand-checked forward on a 3-user, 4-item graph ------------------------------------


def _hand_dataset():
    rng = np.random.default_rng(3)
    return RecDataset(
        name="hand",
        num_users=3,
        num_items=4,
        train=np.array([[0, 0], [0, 1], [1, 1], [2, 3]]),
        valid=np.array([[0, 2]]),
        test=np.array([[1, 3]]),
        features={"image": rng.normal(size=(4, 5)).astype(np.float32), "text": rng.normal(size=(4, 3)).astype(np.float32)},
    )


def _leaky(x):
    return np.where(x > 0, x, 0.01 * x)


def _dense_branch(branch, features, id_emb, mean_adj, concat):
    p = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    f = np.asarray(features, np.float64)
    if branch.mlp is not None:
        f = f @ p(branch.mlp.w) + p(branch.mlp.b)
    x = np.concatenate([p(branch.pref), f])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    for layer in (1, 2, 3):
        h = _leaky(mean_adj @ (x @ p(getattr(branch, f"conv{layer}"))))
        lin, gate = getattr(branch, f"lin{layer}"), getattr(branch, f"gate{layer}")
        x_hat = _leaky(x @ p(lin.w) + p(lin.b)) + id_emb
        if concat:
            x = _leaky(np.concatenate([h, x_hat], 1) @ p(gate.w) + p(gate.b))
        else:
            x = _leaky(h @ p(gate.w) + p(gate.b) + x_hat)
    return x


@pytest.mark.parametrize("concat", [True, False])
def test_forward_matches_dense_numpy_on_a_hand_graph(concat):
    ds = _hand_dataset()
    model = MMGCN(ds, MMGCNConfig(embedding_size=4, image_latent_dim=6, concat=concat), rngs=nnx.Rngs(1))
    # Mean over in-neighbours of the bidirectional graph; item 2 (node 5) has none -> 0.
    adj = np.zeros((7, 7))
    for u, i in ds.train:
        adj[3 + i, u] = adj[u, 3 + i] = 1.0
    mean_adj = adj / np.maximum(adj.sum(1, keepdims=True), 1.0)
    np.testing.assert_allclose(mean_adj[0], [0, 0, 0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(mean_adj[4], [0.5, 0.5, 0, 0, 0, 0, 0])
    id_emb = np.asarray(model.id_emb[...], np.float64)
    expected = sum(_dense_branch(getattr(model, f"gcn_{m}"), ds.features[m], id_emb, mean_adj, concat) for m in ("image", "text")) / 2
    # float32 model against a float64 reference: 1e-5 relative, 1e-6 absolute.
    np.testing.assert_allclose(_call(model, "representation"), expected, rtol=1e-5, atol=1e-6)
    model = MMGCN(ds, MMGCNConfig(embedding_size=4, image_latent_dim=6, concat=concat, stale_eval=False), rngs=nnx.Rngs(1))
    np.testing.assert_allclose(_call(model, "scores", jnp.arange(3)), expected[:3] @ expected[3:].T, rtol=1e-5, atol=1e-6)


def test_stale_eval_uses_the_cached_training_representation(tiny):
    batch = _batch(tiny)
    for stale in (True, False):
        model = MMGCN(tiny, MMGCNConfig(**SMALL, stale_eval=stale), rngs=nnx.Rngs(0))
        assert isinstance(model.cache, TrainingCache)
        np.testing.assert_array_equal(model.cache[...], 0.0)
        _training_loss(model, batch)  # nnx.jit writes the cache back into the model
        cached = np.asarray(model.cache[...])
        np.testing.assert_allclose(cached, _call(model, "representation"), rtol=1e-5, atol=1e-6)
        model.gcn_text.gate3.b[...] = model.gcn_text.gate3.b[...] + 1.0  # a parameter change
        fresh = np.asarray(_call(model, "representation"))
        got = np.asarray(_call(model, "scores", jnp.arange(4)))
        if stale:
            np.testing.assert_allclose(got, cached[:4] @ cached[tiny.num_users :].T, rtol=1e-6)
            assert not np.allclose(got, fresh[:4] @ fresh[tiny.num_users :].T)
        else:
            np.testing.assert_allclose(got, fresh[:4] @ fresh[tiny.num_users :].T, rtol=1e-6)
