"""MGCN: parameters, the graphs, forward and every loss term by hand
(both InfoNCE terms included), gradients, fresh scores, configuration.

Tolerances: float32 model results are compared with float64 numpy references at
``rtol = 1e-5`` / ``atol = 1e-6`` (a few float32 ulps on O(1) numbers after a handful of
sums and one softmax/logsumexp); integer neighbour ids are compared exactly.
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
from mirrorgrad_jax.models import Constant
from mirrorgrad_jax.models.mgcn import MGCN, MGCNConfig, info_nce
from helpers import np_info_nce, packaged_config

D = 8
U, I = 3, 4
HAND_BATCH = np.array([[0, 1, 2, 0], [1, 2, 3, 0], [3, 0, 1, 2]])  # user 0 twice: a false negative, as in the reference
TOL = dict(rtol=1e-5, atol=1e-6)
REG, CL = 0.1, 0.3


def _model(ds, seed=0, **overrides):
    config = dataclasses.replace(MGCNConfig(embedding_size=D, knn_k=2, reg_weight=REG, cl_weight=CL), **overrides)
    return MGCN(ds, config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def hand_proto(hand):
    return _model(hand)


@pytest.fixture
def hand_model(hand_proto):
    """A fresh copy of the shared hand-built model (building one costs compilations)."""
    return nnx.clone(hand_proto)


_loss = nnx.jit(lambda model, batch: model.loss(batch, jax.random.key(0)))
_terms = nnx.jit(lambda model, batch: model.loss_terms(batch))
_representation = nnx.jit(lambda model: model.representation())
_scores = nnx.jit(lambda model, users: model.scores(users))


@functools.partial(jax.jit, static_argnums=0)
def _grad(graphdef, params, rest, batch):
    return jax.grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0)))(params)


def _paths(model, kind) -> set[str]:
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, kind))}


# -- numpy references -----------------------------------------------------------------------


def _np(x):
    return np.asarray(x, np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _dense_ui_graph(ds):
    a = np.zeros((U + I,) * 2)
    for u, i in ds.train:
        a[u, U + i] = a[U + i, u] = 1.0
    deg = a.sum(1)  # summed values; every node of the hand set has an edge
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _dense_kval(features, k):
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = normed @ normed.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    a = np.zeros_like(sim)
    rows = np.arange(len(sim))[:, None]
    a[rows, top] = sim[rows, top]
    r = a.sum(1)
    return a / np.sqrt(r[:, None] * r[None, :])


def _np_forward(model, ds):
    """(final, side, content) computed densely in float64 from the model's parameters."""
    p = {name: _np(getattr(model, name)[...]) for name in _paths(model, nnx.Param)}  # all top-level
    lin = lambda name, x: x @ p[f"{name}_w"] + p[f"{name}_b"]
    e_u, e_i = p["users"], p["items"]
    a = _dense_ui_graph(ds)
    x = np.concatenate([e_u, e_i])
    content = (x + a @ x + a @ (a @ x)) / 3
    views = {}
    for role, gate in (("image", "gate_v"), ("text", "gate_t")):
        purified = e_i * _sigmoid(lin(gate, lin(f"{role}_trs", p[f"{role}_emb"])))
        h = _dense_kval(_np(ds.features[role]), 2) @ purified
        views[role] = np.concatenate([a[:U, U:] @ h, h])
    q = lambda v: np.tanh(v @ p["query_common_w1"] + p["query_common_b1"]) @ p["query_common_w2"]
    logits = np.concatenate([q(views["image"]), q(views["text"])], axis=1)
    w = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    common = w[:, :1] * views["image"] + w[:, 1:] * views["text"]
    sep_v = _sigmoid(lin("gate_image_prefer", content)) * (views["image"] - common)
    sep_t = _sigmoid(lin("gate_text_prefer", content)) * (views["text"] - common)
    side = (sep_v + sep_t + common) / 3
    return content + side, side, content


# -- tests ----------------------------------------------------------------------------------


def test_parameter_count_matches_card(hand, hand_model):
    # The reference's count: d(U + I) + per modality [I*F + F*d + d] + 4 gates (d^2 + d) + query (d^2 + d + d).
    expected = D * (U + I) + sum(I * f.shape[1] + f.shape[1] * D + D for f in hand.features.values()) + 4 * (D * D + D) + D * D + 2 * D
    assert hand_model.num_trainable_params() == expected
    u, i, d, fv, ft = 35_598, 18_357, 64, 4096, 384
    assert d * (u + i) + i * fv + fv * d + d + i * ft + ft * d + d + 4 * (d * d + d) + d * d + 2 * d == 86_000_192


def test_interface_and_state_kinds(hand_model):
    assert MGCN.uses_negatives and MGCN.multimodal and MGCN.first_batch_params == ()
    assert not hand_model.ranks_with_training_cache()
    modal = {f"{r}_{part}" for r in ("image", "text") for part in ("emb", "trs_w", "trs_b")}
    gates = {f"{g}_{part}" for g in ("gate_v", "gate_t", "gate_image_prefer", "gate_text_prefer") for part in ("w", "b")}
    assert _paths(hand_model, nnx.Param) == {"users", "items", "query_common_w1", "query_common_b1", "query_common_w2"} | modal | gates
    assert hand_model.query_common_w2.shape == (D, 1)  # the second query Linear has no bias
    assert _paths(hand_model, Constant) == {"adj_rows", "adj_cols", "adj_values", "adj_order", "r_rows", "r_cols", "r_values"} | {
        f"{r}_knn_{part}" for r in ("image", "text") for part in ("idx", "val", "order")
    }
    assert _paths(hand_model, ...) == _paths(hand_model, nnx.Param) | _paths(hand_model, Constant)  # nothing else


def test_graphs_by_hand(hand, hand_model):
    model = hand_model
    dense = np.zeros((U + I,) * 2)
    np.add.at(dense, (np.asarray(model.adj_rows[...]), np.asarray(model.adj_cols[...])), _np(model.adj_values[...]))
    expected = _dense_ui_graph(hand)
    np.testing.assert_allclose(dense, expected, **TOL)
    # No eps: user 1 (items 1, 2) and item 2 (user 1 only) -> exactly 1/sqrt(2 * 1).
    assert dense[1, U + 2] == pytest.approx(1 / np.sqrt(2), rel=1e-7)
    r_n = np.zeros((U, I))
    np.add.at(r_n, (np.asarray(model.r_rows[...]), np.asarray(model.r_cols[...])), _np(model.r_values[...]))
    np.testing.assert_allclose(r_n, expected[:U, U:], **TOL)
    for role in ("image", "text"):
        got = np.zeros((I, I))
        idx = np.asarray(getattr(model, f"{role}_knn_idx")[...])
        np.add.at(got, (np.repeat(np.arange(I), 2), idx.ravel()), _np(getattr(model, f"{role}_knn_val")[...]).ravel())
        np.testing.assert_allclose(got, _dense_kval(_np(hand.features[role]), 2), **TOL)
        np.testing.assert_array_equal(idx[:, 0], np.arange(I))  # each item is its own first neighbour


def test_info_nce_by_hand():
    rng = np.random.default_rng(0)
    v1, v2 = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    v2[3] = v2[1]  # a repeated row is a negative of its copy
    for tau in (0.2, 1.0):
        np.testing.assert_allclose(float(jax.jit(info_nce, static_argnums=2)(jnp.asarray(v1, jnp.float32), jnp.asarray(v2, jnp.float32), tau)), np_info_nce(v1, v2, tau), **TOL)


def test_forward_and_every_loss_term_by_hand(hand, hand_model):
    model = hand_model
    final, side, content = _np_forward(model, hand)
    got = _representation(model)
    for name, g, e in zip(("final", "side", "content"), got, (final, side, content)):
        np.testing.assert_allclose(g, e, err_msg=name, **TOL)
    users, pos, neg = HAND_BATCH
    u, p, n = final[users], final[U + pos], final[U + neg]
    expected = {
        "bpr": -np.mean(np.log(_sigmoid(np.sum(u * p, 1) - np.sum(u * n, 1)))),
        # 4 rows, divided by the config batch size 2048, as in the reference.
        "l2": 0.5 * (np.sum(u**2) + np.sum(p**2) + np.sum(n**2)) / 2048,
        # InfoNCE(side_items[pos], content_items[pos]) and InfoNCE(side_users[u], content_users[u]), tau 0.2.
        "cl_items": np_info_nce(side[U + pos], content[U + pos], 0.2),
        "cl_users": np_info_nce(side[users], content[users], 0.2),
    }
    terms = _terms(model, jnp.asarray(HAND_BATCH, jnp.int32))
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), value, err_msg=name, **TOL)
    total = expected["bpr"] + REG * expected["l2"] + CL * (expected["cl_items"] + expected["cl_users"])
    np.testing.assert_allclose(float(_loss(model, jnp.asarray(HAND_BATCH, jnp.int32))), total, **TOL)
    np.testing.assert_allclose(_scores(model, jnp.arange(U)), final[:U] @ final[U:].T, **TOL)


def test_reg_over_actual_batch_divides_by_the_batch_rows(hand):
    model = _model(hand, reg_over_actual_batch=True)
    final, _, _ = _np_forward(model, hand)
    users, pos, neg = HAND_BATCH
    u, p, n = final[users], final[U + pos], final[U + neg]
    expected = 0.5 * (np.sum(u**2) + np.sum(p**2) + np.sum(n**2)) / 4
    np.testing.assert_allclose(float(_terms(model, jnp.asarray(HAND_BATCH, jnp.int32))["l2"]), expected, **TOL)


def test_scores_follow_the_current_parameters(hand, hand_model):
    model = hand_model
    before = np.asarray(_scores(model, jnp.arange(U)))
    model.gate_v_w[...] = model.gate_v_w[...] * 3.0 + 0.2
    model.query_common_w2[...] = -model.query_common_w2[...] * 2.0
    final, _, _ = _np_forward(model, hand)
    after = np.asarray(_scores(model, jnp.arange(U)))
    np.testing.assert_allclose(after, final[:U] @ final[U:].T, **TOL)
    assert np.abs(after - before).max() > 1e-4


def test_both_modalities_are_required():
    text_only = make_synthetic(num_users=12, num_items=8, modalities={"text": 16}, seed=1)
    with pytest.raises(ValueError, match=r"MGCN needs both an image and a text feature table.*image_modality='image'.*\['text'\]"):
        MGCN(text_only, MGCNConfig(), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("mgcn", MGCNConfig)
    grid = config["model_config"]
    assert grid["cl_weight"] == [0.001, 0.01, 0.1]
    assert (grid["reg_weight"], grid["knn_k"], grid["n_layers"], grid["n_ui_layers"], grid["cl_temperature"]) == (1e-4, 10, 1, 2, 0.2)
    assert config["train"]["learning_rate"] == 1e-3 and config["train"]["lr_schedule"] == [0.96, 50]
    assert config["train"]["batch_size"] == grid["reg_batch_size"] == 2048
    assert config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
