"""SMORE: parameters, the graphs (per-modality kNN and max-pool fusion), the spectrum
convolution against numpy's FFT, the forward pass and every loss term by hand, dropout
placement, the trained raw features and frozen graphs, configuration and one CLI epoch.

Tolerances: float32 model results are compared with float64 numpy references at
``rtol = 1e-5`` / ``atol = 1e-6``: the values are O(1)-O(10) after a few sums, two float32
FFTs of length <= 8, a softmax and a logsumexp, i.e. a few float32 ulps (about 1e-7
relative each); integer neighbour ids and 0/1 patterns are compared exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import np_info_nce, packaged_config, value_and_grad_constants_fixed
from mirrorgrad_jax.models import Constant, EpochSample
from mirrorgrad_jax.models.smore import (
    SMORE,
    SMOREConfig,
    max_pool_union,
    spectrum_convolution,
)

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.errors import ConfigError

D = 8
U, I = 3, 4
K_IMAGE, K_TEXT = 2, 3  # different, so that each field is seen to drive its own graph
HAND_BATCH = np.array([[0, 1, 2, 0], [1, 2, 3, 0], [3, 0, 1, 2]])  # user 0 twice: a false negative, as in the reference
TOL = {"rtol": 1e-5, "atol": 1e-6}
REG, CL = 0.1, 0.3
VIEWS = ("image", "text", "fusion")


def _config(**overrides):
    base = SMOREConfig(embedding_size=D, n_ui_layers=2, image_knn_k=K_IMAGE, text_knn_k=K_TEXT, reg_weight=REG, cl_weight=CL)
    return dataclasses.replace(base, **overrides)


def _model(ds, seed=0, **overrides):
    return SMORE(ds, _config(**overrides), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def hand_proto(hand):
    return _model(hand)


@pytest.fixture
def hand_model(hand_proto):
    """A fresh copy of the shared hand-built model (building one costs compilations)."""
    return nnx.clone(hand_proto)


# Few programs, each jitted once per config (compilations dominate the file's time).
_forward = nnx.jit(lambda model, batch, mult: (model.representation(mult), model.loss_terms(batch, mult)))
_loss_and_scores = nnx.jit(lambda model, batch, key: (model.loss(batch, key), model.scores(jnp.arange(U))))
_multipliers = nnx.jit(lambda model, key: model.dropout_multipliers(key))


def _paths(model, kind) -> set[str]:
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, kind))}


# -- numpy references (float64) -------------------------------------------------------------


def _np(x):
    return np.asarray(x, np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _dense_ui_graph(ds):
    a = np.zeros((U + I,) * 2)
    for u, i in ds.train:
        a[u, U + i] = a[U + i, u] = 1.0
    deg = a.sum(1)  # summed values; every node of the hand set has an edge
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _dense_kval(features, k):
    """(S, pattern): build_sim, top-k per row, then D^-1/2 S D^-1/2 with the row sums of the kept cosines."""
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = normed @ normed.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(sim))[:, None]
    a = np.zeros_like(sim)
    a[rows, top] = sim[rows, top]
    mask = np.zeros(sim.shape, bool)
    mask[rows, top] = True
    r = a.sum(1)
    return a / np.sqrt(r[:, None] * r[None, :]), mask


def _dense_graphs(ds):
    s_v, m_v = _dense_kval(_np(ds.features["image"]), K_IMAGE)
    s_t, m_t = _dense_kval(_np(ds.features["text"]), K_TEXT)
    # Max-pool fusion on the union of the patterns: absent entries are -inf before the max.
    fused = np.maximum(np.where(m_v, s_v, -np.inf), np.where(m_t, s_t, -np.inf))
    fused[~(m_v | m_t)] = 0.0
    return {"image": s_v, "text": s_t, "fusion": fused}, m_v, m_t


def _np_spectrum(image, text, weights):
    d = image.shape[1]
    w = {k: v[..., 0] + 1j * v[..., 1] for k, v in weights.items()}
    fi, ft = np.fft.rfft(image, axis=1, norm="ortho"), np.fft.rfft(text, axis=1, norm="ortho")
    back = lambda s: np.fft.irfft(s, n=d, axis=1, norm="ortho")
    return back(fi * w["image"]), back(ft * w["text"]), back(fi * ft * w["fusion"])


def _np_forward(model, ds, multipliers=None):
    """(final, side, content) computed densely in float64 from the model's parameters.

    The item graphs come from the DATASET's raw features; the projections read the
    model's (trainable) feature tables.
    """
    p = {name: _np(getattr(model, name)[...]) for name in _paths(model, nnx.Param)}  # all top-level
    lin = lambda name, x: x @ p[f"{name}_w"] + p[f"{name}_b"]
    e_u, e_i = p["users"], p["items"]
    a = _dense_ui_graph(ds)
    x = np.concatenate([e_u, e_i])
    content = (x + a @ x + a @ (a @ x)) / 3  # n_ui_layers = 2
    graphs, _, _ = _dense_graphs(ds)
    weights = {v: p[f"{v}_complex_weight"] for v in VIEWS}
    filtered = _np_spectrum(lin("image_trs", p["image_emb"]), lin("text_trs", p["text_emb"]), weights)
    views = {}
    for view, conv, gate in zip(VIEWS, filtered, ("gate_v", "gate_t", "gate_f")):
        h = graphs[view] @ (e_i * _sigmoid(lin(gate, conv)))  # n_layers = 1
        views[view] = np.concatenate([a[:U, U:] @ h, h])
    q = lambda name, v: np.tanh(v @ p[f"{name}_w1"] + p[f"{name}_b1"]) @ p[f"{name}_w2"]
    att_v, att_t = _softmax(q("query_v", views["fusion"])), _softmax(q("query_t", views["fusion"]))
    prefer = [_sigmoid(lin(g, content)) for g in ("gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer")]
    if multipliers is not None:
        prefer = [g * m for g, m in zip(prefer, multipliers)]
    side = (prefer[0] * att_v * views["image"] + prefer[1] * att_t * views["text"] + prefer[2] * views["fusion"]) / 3
    return content + side, side, content


def _np_terms(final, side, content, divisor):
    users, pos, neg = HAND_BATCH
    u, p, n = final[users], final[U + pos], final[U + neg]
    return {
        "bpr": -np.mean(np.log(_sigmoid(np.sum(u * p, 1) - np.sum(u * n, 1)))),
        "l2": 0.5 * (np.sum(u**2) + np.sum(p**2) + np.sum(n**2)) / divisor,
        "cl_items": np_info_nce(side[U + pos], content[U + pos], 0.2),
        "cl_users": np_info_nce(side[users], content[users], 0.2),
    }


# -- tests ----------------------------------------------------------------------------------


def _count(d, u, i, widths):
    """The reference's count: ids; raw tables and projections; 6 gates; 2 queries (Linear + Linear without bias); 3 filters."""
    return d * (u + i) + sum(i * f + f * d + d for f in widths) + 6 * (d * d + d) + 2 * (2 * d * d + d) + 3 * 2 * (d // 2 + 1)


def test_parameter_count_matches_the_reference_formula(hand, hand_model):
    assert hand_model.num_trainable_params() == _count(D, U, I, [f.shape[1] for f in hand.features.values()])
    assert _count(64, 35_598, 18_357, [4096, 384]) == 86_020_998  # Amazon sports


def test_interface_and_state_kinds(hand_model):
    assert SMORE.uses_negatives and SMORE.multimodal and SMORE.first_batch_params == ()
    assert not hand_model.ranks_with_training_cache()
    modal = {f"{r}_{part}" for r in ("image", "text") for part in ("emb", "trs_w", "trs_b")}  # raw tables trainable (freeze=False)
    gates = {f"{g}_{part}" for g in ("gate_v", "gate_t", "gate_f", "gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer") for part in ("w", "b")}
    queries = {f"{q}_{part}" for q in ("query_v", "query_t") for part in ("w1", "b1", "w2")}
    filters = {f"{v}_complex_weight" for v in VIEWS}
    assert _paths(hand_model, nnx.Param) == {"users", "items"} | modal | gates | queries | filters
    assert hand_model.query_v_w2.shape == (D, D)  # the second query Linear: d -> d, no bias
    assert hand_model.image_complex_weight.shape == (1, D // 2 + 1, 2)
    constants = {"adj_rows", "adj_cols", "adj_values", "r_rows", "r_cols", "r_values"} | {
        f"{v}_knn_{part}" for v in VIEWS for part in ("idx", "val", "order")
    }
    assert _paths(hand_model, Constant) == constants
    assert not _paths(hand_model, EpochSample)  # nothing is redrawn per epoch (the reference's pre_epoch is empty)
    assert _paths(hand_model, ...) == _paths(hand_model, nnx.Param) | constants  # nothing else


def test_graphs_by_hand(hand, hand_model):
    model = hand_model
    dense = np.zeros((U + I,) * 2)
    np.add.at(dense, (np.asarray(model.adj_rows[...]), np.asarray(model.adj_cols[...])), _np(model.adj_values[...]))
    expected = _dense_ui_graph(hand)
    np.testing.assert_allclose(dense, expected, **TOL)
    r_n = np.zeros((U, I))
    np.add.at(r_n, (np.asarray(model.r_rows[...]), np.asarray(model.r_cols[...])), _np(model.r_values[...]))
    np.testing.assert_allclose(r_n, expected[:U, U:], **TOL)
    graphs, m_v, m_t = _dense_graphs(hand)
    widths = {"image": K_IMAGE, "text": K_TEXT, "fusion": K_IMAGE + K_TEXT}
    for view in VIEWS:
        idx = np.asarray(getattr(model, f"{view}_knn_idx")[...])
        assert idx.shape == (I, widths[view])
        got = np.zeros((I, I))
        np.add.at(got, (np.repeat(np.arange(I), widths[view]), idx.ravel()), _np(getattr(model, f"{view}_knn_val")[...]).ravel())
        np.testing.assert_allclose(got, graphs[view], err_msg=view, **TOL)
    # The hand set exercises the max: entries in both graphs with different values (the
    # diagonal at least), and entries in one graph only; a sum or either graph alone fails.
    both = m_v & m_t
    assert np.any(both & ~np.isclose(graphs["image"], graphs["text"])) and np.any(m_v ^ m_t)
    assert not np.allclose(graphs["fusion"], np.where(m_v, graphs["image"], 0) + np.where(m_t, graphs["text"], 0))


def test_max_pool_union_equals_the_dense_max_in_any_chunking():
    rng = np.random.default_rng(5)
    n, k1, k2 = 9, 3, 4
    idx1 = np.stack([rng.choice(n, k1, replace=False) for _ in range(n)])
    idx2 = np.stack([rng.choice(n, k2, replace=False) for _ in range(n)])
    val1, val2 = rng.normal(size=(n, k1)), rng.normal(size=(n, k2))  # negative values too: -inf is the neutral
    rows = np.arange(n)[:, None]
    a, b = np.full((n, n), -np.inf), np.full((n, n), -np.inf)
    a[rows, idx1], b[rows, idx2] = val1, val2
    expected = np.maximum(a, b)
    expected[np.isinf(expected)] = 0.0
    for chunk in (1, 4, 100):
        idx, val = max_pool_union((idx1, val1), (idx2, val2), chunk_size=chunk)
        assert idx.shape == val.shape == (n, k1 + k2) and idx.dtype == np.int32
        got = np.zeros((n, n))
        np.add.at(got, (np.repeat(np.arange(n), k1 + k2), idx.ravel()), val.ravel().astype(np.float64))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)  # float32 copies of the inputs


@pytest.mark.parametrize("d", [8, 7])
def test_spectrum_convolution_matches_numpy_fft(d):
    rng = np.random.default_rng(d)
    image, text = rng.normal(size=(5, d)), rng.normal(size=(5, d))
    weights = {v: rng.normal(size=(1, d // 2 + 1, 2)) for v in VIEWS}
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    got = jax.jit(spectrum_convolution)(f32(image), f32(text), {v: f32(w) for v, w in weights.items()})
    for name, g, e in zip(VIEWS, got, _np_spectrum(image, text, weights)):
        np.testing.assert_allclose(g, e, err_msg=name, **TOL)
    # irfft reads only the real part of the 0 bin (and of the d/2 bin for even d): those
    # imaginary filter entries get no gradient, as in torch; every other entry does.
    grads = jax.grad(lambda w: sum(jnp.sum(c * jnp.cos(c)) for c in spectrum_convolution(f32(image), f32(text), w)))(
        {v: f32(w) for v, w in weights.items()}
    )
    silent = {(0, 1)} | ({(d // 2, 1)} if d % 2 == 0 else set())
    for v in VIEWS:
        g = np.asarray(grads[v][0])
        for f in range(d // 2 + 1):
            for part in (0, 1):
                assert (abs(g[f, part]) < 1e-6) == ((f, part) in silent), (v, f, part, g[f, part])


def _np_total(terms, config):
    return terms["bpr"] + config.reg_weight * terms["l2"] + config.cl_weight * (terms["cl_items"] + terms["cl_users"])


def test_forward_and_every_loss_term_by_hand(hand, hand_model):
    model = hand_model
    final, side, content = _np_forward(model, hand)
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    representation, terms = _forward(model, batch, None)
    for name, g, e in zip(("final", "side", "content"), representation, (final, side, content)):
        np.testing.assert_allclose(g, e, err_msg=name, **TOL)
    # 4 rows, the L2 divided by the config batch size 2048, as in the reference.
    expected = _np_terms(final, side, content, 2048)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(terms[name]), value, err_msg=name, **TOL)
    loss, scores = _loss_and_scores(model, batch, jax.random.key(3))  # dropout 0: any key
    np.testing.assert_allclose(float(loss), _np_total(expected, model.config), **TOL)
    np.testing.assert_allclose(scores, final[:U] @ final[U:].T, **TOL)
    assert model.dropout_multipliers(jax.random.key(0)) is None  # Dropout(0): the identity


def test_dropout_acts_on_the_three_preference_gates_only(hand, hand_model):
    rng = np.random.default_rng(7)
    multipliers = rng.choice([0.0, 2.0], size=(3, U + I, D))  # a p = 0.5 inverted-dropout pattern
    final, side, content = _np_forward(hand_model, hand, multipliers)
    (got, terms) = _forward(hand_model, jnp.asarray(HAND_BATCH, jnp.int32), jnp.asarray(multipliers, jnp.float32))
    for name, g, e in zip(("final", "side", "content"), got, (final, side, content)):
        np.testing.assert_allclose(g, e, err_msg=name, **TOL)
    for name, value in _np_terms(final, side, content, 2048).items():
        np.testing.assert_allclose(float(terms[name]), value, err_msg=name, **TOL)
    # A mask on the gates changes the side view, not the content view.
    no_drop = _np_forward(hand_model, hand)
    np.testing.assert_allclose(content, no_drop[2], rtol=0, atol=0)
    assert np.abs(side - no_drop[1]).max() > 1e-3


@pytest.fixture(scope="module")
def dropout_model(hand):
    """p = 0.25 and the corrected L2 divisor: one more configuration, one more set of compilations."""
    return _model(hand, dropout_rate=0.25, reg_over_actual_batch=True)


def test_dropout_draws_from_the_loss_key_and_is_off_in_scores(hand, dropout_model):
    model, p = dropout_model, 0.25
    masks = [np.asarray(_multipliers(model, jax.random.key(s))) for s in range(20)]
    assert masks[0].shape == (3, U + I, D)
    np.testing.assert_array_equal(np.unique(masks), np.float32([0.0, 1.0 / (1.0 - p)]))
    assert not np.array_equal(masks[0][0], masks[0][1]) and not np.array_equal(masks[0][1], masks[0][2])  # three masks
    # Keep rate 1 - p: 20 x 168 = 3,360 draws, 3 sigma = 0.022.
    assert abs(np.mean(np.asarray(masks) > 0) - (1 - p)) < 0.03
    # The loss uses the masks drawn from its key (another key, another loss); scores use none (eval mode).
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    loss, scores = _loss_and_scores(model, batch, jax.random.key(0))
    expected = _np_total(_np_terms(*_np_forward(model, hand, masks[0]), 4), model.config)  # 4: reg_over_actual_batch
    np.testing.assert_allclose(float(loss), expected, **TOL)
    assert float(_loss_and_scores(model, batch, jax.random.key(1))[0]) != float(loss)
    final, _, _ = _np_forward(model, hand)
    np.testing.assert_allclose(scores, final[:U] @ final[U:].T, **TOL)


def test_reg_over_actual_batch_divides_by_the_batch_rows(hand, dropout_model):
    # The reference's divisor (the config batch size, 2048) is checked by the forward test.
    model = dropout_model
    batch = jnp.asarray(HAND_BATCH, jnp.int32)
    forward = _np_forward(model, hand, np.asarray(_multipliers(model, jax.random.key(0))))
    loss = float(_loss_and_scores(model, batch, jax.random.key(0))[0])
    np.testing.assert_allclose(loss, _np_total(_np_terms(*forward, 4), model.config), **TOL)
    assert abs(loss - _np_total(_np_terms(*forward, 2048), model.config)) > 1e-3


def test_raw_features_are_trained_and_the_graphs_never_rebuilt(hand, hand_model):
    model = hand_model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, grads = value_and_grad_constants_fixed(graphdef, params, rest, jnp.asarray(HAND_BATCH, jnp.int32))
    # freeze=False: the raw feature tables get a gradient through their projections.
    for role in ("image", "text"):
        assert float(jnp.abs(grads[f"{role}_emb"][...]).max()) > 0
    # Only parameters are differentiated: no constant (graph) is in the gradient.
    assert {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(grads)} == _paths(model, nnx.Param)
    # After the tables move, the graphs are still those of the dataset's raw features.
    graphs_before = {v: np.asarray(getattr(model, f"{v}_knn_val")[...]) for v in VIEWS}
    model.image_emb[...] = -3.0 * model.image_emb[...][::-1]
    model.text_emb[...] = model.text_emb[...] + 2.0
    final, _, _ = _np_forward(model, hand)  # graphs from hand.features, projections from the moved tables
    np.testing.assert_allclose(_loss_and_scores(model, jnp.asarray(HAND_BATCH, jnp.int32), jax.random.key(0))[1], final[:U] @ final[U:].T, **TOL)
    for v in VIEWS:
        np.testing.assert_array_equal(np.asarray(getattr(model, f"{v}_knn_val")[...]), graphs_before[v])


def test_knn_k_beyond_the_items_and_missing_modalities_are_refused(hand):
    for field in ("image_knn_k", "text_knn_k"):
        with pytest.raises(ConfigError, match=rf"SMORE {field}=5 exceeds the number of items \(4\)"):
            _model(hand, **{field: 5})
    text_only = make_synthetic(num_users=12, num_items=8, modalities={"text": 16}, seed=1)
    with pytest.raises(ConfigError, match=r"SMORE needs both an image and a text feature table.*image_modality='image'"):
        SMORE(text_only, SMOREConfig(image_knn_k=2, text_knn_k=2), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("smore", SMOREConfig)
    grid = config["model_config"]
    assert grid["n_ui_layers"] == [3, 4] and grid["dropout_rate"] == [0.0, 0.1]
    assert grid["image_knn_k"] == grid["text_knn_k"] == [10, 15, 20, 40]
    assert grid["reg_weight"] == [1e-5, 1e-4]
    assert (grid["embedding_size"], grid["n_layers"], grid["cl_weight"], grid["cl_temperature"]) == (64, 1, 0.01, 0.2)
    defaults = SMOREConfig()
    assert (defaults.n_ui_layers, defaults.image_knn_k, defaults.text_knn_k, defaults.reg_weight, defaults.dropout_rate) == (3, 10, 10, 1e-5, 0.0)
    train = config["train"]
    assert train["learning_rate"] == 1e-3 and train["lr_schedule"] == [0.96, 50] and train["valid_metric"] == "recall@20"
    assert train["batch_size"] == grid["reg_batch_size"] == 2048
    assert config["mg"] == {"alpha1": 1.0, "alpha2": [0.1, 0.2, 0.3], "beta": 3}
