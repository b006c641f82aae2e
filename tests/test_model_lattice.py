"""LATTICE: parameters, both graphs against dense numpy, forward and loss by
hand, the first-batch-only gradient of the graph learner, the cached graph, fresh scores.

Tolerances: float32 model results are compared with float64 numpy references at
``rtol = 1e-5`` / ``atol = 1e-6`` (a few float32 ulps on O(1) numbers after a handful of
sums); gradients of two float32 computations of the same function at ``rtol = 1e-4`` /
``atol = 1e-6`` (different summation orders, then a backward pass). Integer neighbour
ids are compared exactly.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.models import Constant, TrainingCache
from mirrorgrad_jax.models.lattice import LATTICE, LATTICEConfig
from helpers import packaged_config

D = 8
LAM = 0.9
HAND_BATCH = np.array([[0, 1, 2], [1, 2, 3], [3, 0, 1]])
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def hand_proto(hand):
    return _model(hand, knn_k=2)


@pytest.fixture
def hand_model(hand_proto):
    """A fresh copy of the shared hand-built model (building one costs compilations)."""
    return nnx.clone(hand_proto)


def _model(ds, seed=0, **overrides):
    config = dataclasses.replace(LATTICEConfig(embedding_size=D, feat_embed_dim=D, reg_weight=0.1), **overrides)
    return LATTICE(ds, config, rngs=nnx.Rngs(seed))


# Jitted forward passes (one compile per model structure; cheaper than eager dispatch).
_first_batch_loss = nnx.jit(lambda model, batch: model.first_batch_loss(batch, jax.random.key(0)))
_loss = nnx.jit(lambda model, batch: model.loss(batch, jax.random.key(0)))
_scores = nnx.jit(lambda model, users: model.scores(users))
_item_graph = nnx.jit(lambda model: model.graph_learner.item_graph())


@jax.jit
def _dense_lists(idx, val):
    """Neighbour lists as the dense matrix they stand for (repeated columns add)."""
    rows = jnp.repeat(jnp.arange(idx.shape[0]), idx.shape[1])
    return jnp.zeros((idx.shape[0],) * 2).at[rows, idx.ravel()].add(val.ravel())


def _paths(model, kind) -> set[str]:
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, kind))}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grad(graphdef, which, params, rest, batch):
    loss = lambda p: getattr(nnx.merge(graphdef, p, rest, copy=True), which)(batch, jax.random.key(0))
    return jax.grad(loss)(params)


def _grads(model, which, batch):
    """d ``model.<which>(batch)`` / d params, constants (and the cached graph) held fixed.

    ``graphdef`` is static: models with equal configs and shapes share one compilation.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return _grad(graphdef, which, params, rest, jnp.asarray(batch, jnp.int32))


# -- dense numpy references ---------------------------------------------------------------


def _np(x):
    return np.asarray(x, np.float64)


def _topk_values_dense(features, k):
    """Dense matrix holding each row's top-k cosine values (the item itself included)."""
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = normed @ normed.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    dense = np.zeros_like(sim)
    rows = np.arange(len(sim))[:, None]
    dense[rows, top] = sim[rows, top]
    return dense


def _sym_norm(a):
    r = a.sum(1)
    inv = np.where(r > 0, 1 / np.sqrt(np.where(r > 0, r, 1)), 0.0)
    return a * inv[:, None] * inv[None, :]


def _dense_item_graph(model, ds, k):
    """S from the model's current learner parameters, built densely as the reference does."""
    learner = model.graph_learner
    w = jax.nn.softmax(_np(learner.modal_weight[...]))
    learned, original = 0.0, 0.0
    for m, role in enumerate(("image", "text")):
        proj = _np(getattr(learner, f"{role}_emb")[...]) @ _np(getattr(learner, f"{role}_trs_w")[...]) + _np(getattr(learner, f"{role}_trs_b")[...])
        learned = learned + w[m] * _topk_values_dense(proj, k)
        original = original + w[m] * _sym_norm(_topk_values_dense(_np(ds.features[role]), k))
    return (1 - LAM) * _sym_norm(learned) + LAM * original


def _dense_ui_graph(ds):
    n = ds.num_users + ds.num_items
    a = np.eye(n)
    for u, i in ds.train:
        a[u, ds.num_users + i] = a[ds.num_users + i, u] = 1.0
    return a / a.sum(1, keepdims=True)


def _dense_forward(model, ds, s):
    x = np.concatenate([_np(model.users[...]), _np(model.items[...])])
    a, layers = _dense_ui_graph(ds), [x]
    for _ in range(2):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    h = s @ _np(model.items[...])
    return mean[: ds.num_users], mean[ds.num_users :] + h / np.linalg.norm(h, axis=1, keepdims=True)


def _dense_loss(users, items, batch, reg_weight, divisor):
    u, p, n = users[batch[0]], items[batch[1]], items[batch[2]]
    bpr = -np.mean(-np.log1p(np.exp(-(np.sum(u * p, 1) - np.sum(u * n, 1)))))
    return bpr + reg_weight * 0.5 * (np.sum(u**2) + np.sum(p**2) + np.sum(n**2)) / divisor


# -- tests ----------------------------------------------------------------------------------


def test_parameter_count_matches_card(hand, hand_model):
    u, i = hand.num_users, hand.num_items
    # The reference's count: d(U + I) + per modality [raw table I*F + projection F*d_f + d_f] + modal_weight (2).
    expected = D * (u + i) + sum(i * f.shape[1] + f.shape[1] * D + D for f in hand.features.values()) + 2
    assert hand_model.num_trainable_params() == expected
    u, i, d, fv, ft = 35_598, 18_357, 64, 4096, 384
    assert d * (u + i) + i * fv + fv * d + d + i * ft + ft * d + d + 2 == 85_979_330


def test_interface_and_state_kinds(hand_model):
    assert LATTICE.uses_negatives and LATTICE.multimodal and LATTICE.trainable
    assert LATTICE.first_batch_params == ("graph_learner",)
    model = hand_model
    assert not model.ranks_with_training_cache()
    params = _paths(model, nnx.Param)
    learner = {f"graph_learner/{r}_{part}" for r in ("image", "text") for part in ("emb", "trs_w", "trs_b")}
    assert params == {"users", "items", "graph_learner/modal_weight"} | learner
    constants = _paths(model, Constant)
    assert constants == {"adj_rows", "adj_cols", "adj_values", "adj_order"} | {
        f"graph_learner/{r}_knn_{part}" for r in ("image", "text") for part in ("idx", "val")
    }
    assert _paths(model, TrainingCache) == {"item_graph_idx", "item_graph_val"}
    cache = nnx.state(model, TrainingCache)
    # S as (I, 4k) lists: learned image, learned text, original image, original text.
    assert cache["item_graph_idx"].shape == cache["item_graph_val"].shape == (4, 4 * 2)


def test_user_item_graph_is_row_normalised_with_self_loops(hand, hand_model):
    model = hand_model
    n = 7
    dense = np.zeros((n, n))
    np.add.at(dense, (np.asarray(model.adj_rows[...]), np.asarray(model.adj_cols[...])), _np(model.adj_values[...]))
    expected = _dense_ui_graph(hand)
    np.testing.assert_allclose(dense, expected, **TOL)
    # Each row r holds 1/(deg_r + 1), self-loop included, so the matrix is not symmetric.
    assert dense[0, 0] == pytest.approx(1 / 3) and dense[3, 0] == pytest.approx(1 / 3)  # user 0 (deg 2), item 0 (deg 2)
    assert dense[1, 5] == pytest.approx(1 / 3) and dense[5, 1] == pytest.approx(1 / 2)  # user 1 (deg 2), item 2 (deg 1)


@pytest.mark.parametrize("which", ["hand", "tiny"])
def test_item_graph_lists_equal_the_dense_reference(which, hand, hand_model, tiny):
    # On tiny: 40 items in similarity blocks of 16 rows (the last one padded).
    ds, k, model = (hand, 2, hand_model) if which == "hand" else (tiny, 10, _model(tiny, knn_chunk_size=16))
    # Not at the symmetric init [0.5, 0.5], so a mixed-up weight order would show.
    model.graph_learner.modal_weight[...] = jnp.array([0.3, -0.4])
    idx, val = _item_graph(model)
    assert idx.shape == (ds.num_items, 4 * k)
    expected = _dense_item_graph(model, ds, k)
    np.testing.assert_allclose(_dense_lists(idx, val), expected, **TOL)
    # Each list block holds the top-k of its own similarity, the item itself first.
    for block in range(4):
        np.testing.assert_array_equal(np.asarray(idx)[:, block * k], np.arange(ds.num_items))
    # The frozen graphs are K_val of the RAW features.
    learner = model.graph_learner
    for role in ("image", "text"):
        raw = _sym_norm(_topk_values_dense(_np(ds.features[role]), k))
        np.testing.assert_allclose(_dense_lists(getattr(learner, f"{role}_knn_idx")[...], getattr(learner, f"{role}_knn_val")[...]), raw, **TOL)


def test_forward_and_loss_by_hand(hand, hand_model):
    model = hand_model
    s = _dense_item_graph(model, hand, 2)
    users, items = _dense_forward(model, hand, s)
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    # 3 rows, but the L2 term is divided by the config batch size, 2048, as in the reference.
    expected = _dense_loss(users, items, HAND_BATCH, 0.1, 2048)
    assert expected - _dense_loss(users, items, HAND_BATCH, 0.0, 1) > 1e-6  # the L2 term is visible
    np.testing.assert_allclose(float(_loss(model, batch)), expected, **TOL)  # the graph cached at init
    np.testing.assert_allclose(float(_first_batch_loss(model, batch)), expected, **TOL)
    np.testing.assert_allclose(_scores(model, jnp.arange(3)), users @ items.T, **TOL)


def test_reg_over_actual_batch_divides_by_the_batch_rows(hand):
    model = _model(hand, knn_k=2, reg_over_actual_batch=True)
    users, items = _dense_forward(model, hand, _dense_item_graph(model, hand, 2))
    np.testing.assert_allclose(float(_loss(model, jnp.asarray(HAND_BATCH, jnp.int32))), _dense_loss(users, items, HAND_BATCH, 0.1, 3), **TOL)


def test_first_batch_loss_trains_every_parameter_and_loss_leaves_the_learner_alone(hand_model):
    model, batch = hand_model, HAND_BATCH
    first = _grads(model, "first_batch_loss", batch)
    for path, g in jax.tree_util.tree_leaves_with_path(first):
        assert float(jnp.abs(g).max()) > 0.0, f"first_batch_loss: no gradient reaches {jax.tree_util.keystr(path)}"
    later = _grads(model, "loss", batch)
    for path, g in jax.tree_util.tree_leaves_with_path(later):
        name = jax.tree_util.keystr(path)
        if name.startswith("['graph_learner']"):
            assert float(jnp.abs(g).max()) == 0.0, f"loss: {name} must get no gradient"
        else:
            assert float(jnp.abs(g).max()) > 0.0, f"loss: no gradient reaches {name}"
    # Through the same (detached or not) S, the id tables get the same gradient.
    for name in ("users", "items"):
        np.testing.assert_allclose(first[name][...], later[name][...], rtol=1e-4, atol=1e-7)


def test_learner_gradient_equals_differentiating_the_dense_top_k(hand, hand_model):
    """The recomputed kept values give torch's gradient through ``topk(cos).values``."""
    model = hand_model
    model.graph_learner.modal_weight[...] = jnp.array([0.3, -0.4])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    raw = {r: jnp.asarray(_sym_norm(_topk_values_dense(_np(hand.features[r]), 2)), jnp.float32) for r in ("image", "text")}
    adj = jnp.asarray(_dense_ui_graph(hand), jnp.float32)

    def dense_loss(p):
        lp = p["graph_learner"]
        w = jax.nn.softmax(lp["modal_weight"][...])
        learned, original = 0.0, 0.0
        for m, role in enumerate(("image", "text")):
            x = lp[f"{role}_emb"][...] @ lp[f"{role}_trs_w"][...] + lp[f"{role}_trs_b"][...]
            x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
            values, top = jax.lax.top_k(x @ x.T, 2)
            learned = learned + w[m] * jnp.zeros((4, 4)).at[jnp.arange(4)[:, None], top].set(values)
            original = original + w[m] * raw[role]
        inv = jax.lax.rsqrt(learned.sum(1))
        s = (1 - LAM) * learned * inv[:, None] * inv[None, :] + LAM * original
        e_u, e_i = p["users"][...], p["items"][...]
        layers = [jnp.concatenate([e_u, e_i])]
        for _ in range(2):
            layers.append(adj @ layers[-1])
        mean = sum(layers) / 3
        h = s @ e_i
        u_all, i_all = mean[:3], mean[3:] + h / jnp.linalg.norm(h, axis=1, keepdims=True)
        u, pos, neg = u_all[batch[0]], i_all[batch[1]], i_all[batch[2]]
        bpr = -jnp.mean(jax.nn.log_sigmoid(jnp.sum(u * pos, 1) - jnp.sum(u * neg, 1)))
        return bpr + 0.1 * 0.5 * (jnp.sum(u * u) + jnp.sum(pos * pos) + jnp.sum(neg * neg)) / 2048

    expected = jax.jit(jax.grad(dense_loss))(params)
    got = _grads(model, "first_batch_loss", HAND_BATCH)
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        assert float(jnp.abs(e).max()) > 0.0
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_first_batch_caches_the_rebuilt_graph_loss_reuses_it_and_scores_rebuild(hand, hand_model):
    model = hand_model
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    learner = model.graph_learner

    def move_learner(scale):
        for role in ("image", "text"):
            getattr(learner, f"{role}_trs_w")[...] = getattr(learner, f"{role}_trs_w")[...] * scale + 0.05
        learner.modal_weight[...] = learner.modal_weight[...] + jnp.array([0.2, -0.3]) * scale

    move_learner(1.5)
    loss_before = float(_loss(model, batch))  # still the graph of the init parameters
    first = float(_first_batch_loss(model, batch))
    s_new = _dense_item_graph(model, hand, 2)
    # The cache now holds S of the moved parameters, exactly the graph a rebuild gives.
    cached_idx, cached_val = model.item_graph_idx[...], model.item_graph_val[...]
    idx, val = _item_graph(model)
    np.testing.assert_array_equal(cached_idx, idx)
    np.testing.assert_array_equal(cached_val, val)
    np.testing.assert_allclose(_dense_lists(cached_idx, cached_val), s_new, **TOL)
    users, items = _dense_forward(model, hand, s_new)
    np.testing.assert_allclose(first, _dense_loss(users, items, HAND_BATCH, 0.1, 2048), **TOL)
    assert abs(first - loss_before) > 1e-6
    np.testing.assert_allclose(float(_loss(model, batch)), first, **TOL)

    # Later steps move the learner; ``loss`` keeps the cached S, ``scores`` rebuilds from it.
    move_learner(-2.0)
    np.testing.assert_allclose(float(_loss(model, batch)), first, **TOL)
    s_later = _dense_item_graph(model, hand, 2)
    assert np.abs(s_later - s_new).max() > 1e-3
    users, items = _dense_forward(model, hand, s_later)
    np.testing.assert_allclose(_scores(model, jnp.arange(3)), users @ items.T, **TOL)
    np.testing.assert_array_equal(model.item_graph_val[...], cached_val)  # scores leave the cache alone


def test_single_modality_uses_its_graphs_with_weight_one():
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.warns(UserWarning, match="no 'image' modality"):
        model = LATTICE(text_only, LATTICEConfig(embedding_size=D, feat_embed_dim=D), rngs=nnx.Rngs(0))
    assert model.graph_learner.modalities == ("text",)
    assert not hasattr(model.graph_learner, "modal_weight")
    assert model.num_trainable_params() == D * 100 + 40 * 64 + 64 * D + D
    learner = model.graph_learner
    proj = _np(learner.text_emb[...]) @ _np(learner.text_trs_w[...]) + _np(learner.text_trs_b[...])
    expected = (1 - LAM) * _sym_norm(_topk_values_dense(proj, 10)) + LAM * _sym_norm(_topk_values_dense(_np(text_only.features["text"]), 10))
    idx, val = model.item_graph_idx[...], model.item_graph_val[...]
    assert idx.shape == (40, 20)
    np.testing.assert_allclose(_dense_lists(idx, val), expected, **TOL)


def test_a_dataset_without_image_or_text_names_what_it_has(hand):
    other = make_synthetic(num_users=60, num_items=40, modalities={"audio": 64}, seed=1)
    with pytest.raises(ValueError, match=r"LATTICE needs an image and/or a text.*\['audio'\]"):
        LATTICE(other, LATTICEConfig(), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("lattice", LATTICEConfig)
    grid = config["model_config"]
    assert grid["reg_weight"] == [0.0, 1e-5, 1e-4, 1e-3]
    assert (grid["knn_k"], grid["lambda_coeff"], grid["n_layers"], grid["n_ui_layers"], grid["reg_batch_size"]) == (10, 0.9, 1, 2, 2048)
    assert config["train"]["learning_rate"] == [1e-4, 5e-4, 1e-3, 5e-3]
    assert config["train"]["lr_schedule"] == [0.96, 50]
    assert config["train"]["batch_size"] == grid["reg_batch_size"]
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
