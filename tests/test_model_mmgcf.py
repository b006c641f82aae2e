"""MMGCF: parameter counts, every fusion x weighting and the loss by hand, the edge sample, frozen features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import packaged_config, value_and_grad_constants_fixed
from mirrorgrad_jax.models import Constant, EpochSample, build_config
from mirrorgrad_jax.models.mmgcf import MMGCF, MMGCFConfig

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import kept_edge_count, sample_edges_degree_sensitive

D, F = 8, 6  # embedding_size; feat_embed_dim where concat lets it differ
EPS = 1e-7  # the reference's degree epsilon
FUSIONS = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")
BATCH = np.array([[0, 1, 2, 0], [1, 2, 3, 0], [3, 0, 1, 2]])  # (users; positives; negatives), B = 4


def _model(ds, **overrides):
    f = F if overrides.get("fusion_mode") == "concat" else D
    return MMGCF(ds, MMGCFConfig(**{"embedding_size": D, "feat_embed_dim": f, **overrides}), rngs=nnx.Rngs(0))


# One jitted program per config: loss terms, loss and full ranking together (shared across tests).
_jit_all = nnx.jit(lambda m, b: (m.loss_terms(b), m.loss(b, jax.random.key(0)), m.scores(jnp.arange(m.num_users))))


def _p(model, name):
    return np.asarray(getattr(model, name)[...], np.float64)


def _normalised(edges, num_users, num_items):
    """Dense D^-1/2 A D^-1/2 of the (user, item) ``edges``, degrees counted from them, plus 1e-7."""
    n = num_users + num_items
    a = np.zeros((n, n))
    for u, i in edges:
        a[u, num_users + i] = a[num_users + i, u] = 1.0
    deg = a.sum(1) + EPS
    return a / np.sqrt(deg[:, None] * deg[None, :])


def _dense(rows, cols, values, n):
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
    return a


def _kept_edges(model):
    rows, cols = np.asarray(model.masked_rows[...]), np.asarray(model.masked_cols[...])
    return sorted((int(r), int(c) - model.num_users) for r, c in zip(rows, cols) if r < model.num_users)


def _lightgcn(a, e_u, e_i, n_layers):
    layers = [np.concatenate([e_u, e_i])]
    for _ in range(n_layers):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    return mean[: len(e_u)], mean[len(e_u) :]


def _fused_by_hand(model, ds, i):
    """The fused item vectors written out for each fusion x weighting (image and text present, M = 2)."""
    fv = ds.features["image"].astype(np.float64) @ _p(model, "image_trs_w") + _p(model, "image_trs_b")
    ft = ds.features["text"].astype(np.float64) @ _p(model, "text_trs_w") + _p(model, "text_trs_b")
    n = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    lin = lambda name, *parts: np.concatenate(parts, 1) @ _p(model, f"{name}_w") + _p(model, f"{name}_b")
    a = 1.0 / (1.0 + np.exp(-_p(model, "mm_alpha"))) if model.config.weighting == "alpha" else None
    return {
        ("mean", "equal"): lambda: (i + (fv + ft) / 2) / 2,
        ("mean", "alpha"): lambda: (a * i + (1 - a) * fv + (1 - a) * ft) / 3,
        ("mean", "normalized"): lambda: (2 * n(i) + n(fv) + n(ft)) / 3,
        ("sum", "equal"): lambda: i + fv + ft,
        ("sum", "alpha"): lambda: a * i + (1 - a) * (fv + ft),
        ("sum", "normalized"): lambda: 2 * n(i) + n(fv) + n(ft),
        ("concat", "equal"): lambda: lin("id_mm_concat", i, lin("mm_concat", fv, ft)),
        ("concat", "alpha"): lambda: lin("all_concat", a * i, (1 - a) * fv, (1 - a) * ft),
        ("concat", "normalized"): lambda: lin("all_concat", 2 * n(i), n(fv), n(ft)),
    }[model.config.fusion_mode, model.config.weighting]()


def _params_by_formula(u, i, widths, d, f, fusion, weighting, *, reference=False):
    """This port's count; ``reference=True``: MMRec's, which builds every concat layer whatever the weighting."""
    m = len(widths)
    count = d * (u + i) + sum(w * f + f for w in widths) + (weighting == "alpha")
    if fusion == "concat":
        all_concat, mm_concat, id_mm_concat = (d + m * f + 1) * d, (m * f + 1) * f * (m > 1), (d + f + 1) * d
        if reference:
            count += all_concat + mm_concat + id_mm_concat
        else:
            count += mm_concat + id_mm_concat if weighting == "equal" else all_concat
    return count


def test_parameter_count_by_formula(hand):
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    for fusion in FUSIONS:
        f = F if fusion == "concat" else D
        for weighting in WEIGHTINGS:
            model = _model(hand, fusion_mode=fusion, weighting=weighting)
            assert model.num_trainable_params() == _params_by_formula(3, 4, (128, 64), D, f, fusion, weighting)
            if fusion == "concat" or weighting == "alpha":  # the cases where M changes the count
                with pytest.warns(UserWarning, match="no 'image' modality"):
                    single = _model(text_only, fusion_mode=fusion, weighting=weighting)
                assert single.modalities == ("text",)
                assert single.num_trainable_params() == _params_by_formula(60, 40, (64,), D, f, fusion, weighting)
    # One modality: no mm_concat layer (the reference builds it only for M > 1).
    assert not hasattr(single, "mm_concat_w") and hasattr(_model(hand, fusion_mode="concat"), "mm_concat_w")
    # The reference's printed count adds the concat layers its weighting leaves unused:
    # here alpha + concat lacks mm_concat (6*(12+1)) and id_mm_concat (8*(14+1)).
    assert _params_by_formula(3, 4, (128, 64), D, F, "concat", "alpha", reference=True) - _params_by_formula(
        3, 4, (128, 64), D, F, "concat", "alpha"
    ) == 6 * 13 + 8 * 15
    # Defaults (mean, equal, d = f = 64) on Amazon Sports (35,598 users, 18,357 items, 4096-d image, 384-d text).
    assert _params_by_formula(35_598, 18_357, (4096, 384), 64, 64, "mean", "equal") == 3_739_968


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_weighting_forward_and_loss_by_hand(hand, fusion):
    # 6 distinct train edges, dropout 0.5 -> int(6 * 0.5) = 3 kept edges; two LightGCN layers.
    for weighting in WEIGHTINGS:
        model = _model(hand, fusion_mode=fusion, weighting=weighting, n_ui_layers=2, dropout=0.5, reg_weight=0.1)
        if weighting == "alpha":
            model.mm_alpha[...] = jnp.asarray(0.7, jnp.float32)  # a = sigmoid(0.7) != 0.5: a and 1 - a cannot swap unseen
        model.pre_epoch(np.random.default_rng(4))
        e_u, e_i = _p(model, "users"), _p(model, "items")
        (bpr, l2), loss, scores = _jit_all(model, jnp.asarray(BATCH, jnp.int32))

        # Ranking: LightGCN on the FULL A_sym, then the fusion.
        users, items = _lightgcn(_normalised(hand.train.tolist(), 3, 4), e_u, e_i, 2)
        z = _fused_by_hand(model, hand, items)
        assert z.shape == (4, D)
        # float32 sums of O(1) products (128-wide projections, two graph layers): 1e-5 relative is ample.
        np.testing.assert_allclose(scores, users @ z.T, rtol=1e-5, atol=1e-6, err_msg=f"{fusion}/{weighting}")

        # Training: the same on this epoch's sampled graph; L2 on the INITIAL ID rows, over 2B.
        users, items = _lightgcn(_normalised(_kept_edges(model), 3, 4), e_u, e_i, 2)
        z = _fused_by_hand(model, hand, items)
        u = users[BATCH[0]]
        diff = np.sum(u * z[BATCH[1]], 1) - np.sum(u * z[BATCH[2]], 1)
        expected_bpr = np.mean(np.log1p(np.exp(-diff)))
        expected_l2 = (np.sum(e_u[BATCH[0]] ** 2) + np.sum(e_i[BATCH[1]] ** 2) + np.sum(e_i[BATCH[2]] ** 2)) / (2 * 4)
        np.testing.assert_allclose(float(bpr), expected_bpr, rtol=1e-5, err_msg=f"{fusion}/{weighting}")
        np.testing.assert_allclose(float(l2), expected_l2, rtol=1e-5)
        np.testing.assert_allclose(float(loss), expected_bpr + 0.1 * expected_l2, rtol=1e-5)


def test_edge_sample_by_hand_and_the_full_graph_for_ranking(hand):
    # Same config as a case above: the jitted program is reused.
    model = _model(hand, fusion_mode="mean", weighting="equal", n_ui_layers=2, dropout=0.5, reg_weight=0.1)
    assert model.num_kept_edges == kept_edge_count(6, 0.5) == 3
    # The full graph (ranking) is A_sym of every distinct train pair.
    full = _dense(model.full_rows[...], model.full_cols[...], model.full_values[...], 7)
    np.testing.assert_allclose(full, _normalised(hand.train.tolist(), 3, 4), rtol=1e-6)
    batch = jnp.asarray(BATCH, jnp.int32)
    _, _, before = _jit_all(model, batch)
    losses = set()
    for seed in range(6):
        model.pre_epoch(np.random.default_rng(seed))
        rows, cols, values = (np.asarray(getattr(model, f"masked_{p}")[...]) for p in ("rows", "cols", "values"))
        assert rows.shape == cols.shape == values.shape == (6,)  # 2 x 3 entries, every epoch
        kept = _kept_edges(model)
        assert len(set(kept)) == 3 and set(kept) <= {tuple(p) for p in hand.train.tolist()}
        # Re-normalised with the KEPT degrees, both directions.
        np.testing.assert_allclose(_dense(rows, cols, values, 7), _normalised(kept, 3, 4), rtol=1e-6)
        # The shared sampler with the same generator state draws exactly this graph.
        again = sample_edges_degree_sensitive(np.asarray(model.train_pairs[...]), 3, 4, 3, np.random.default_rng(seed))
        np.testing.assert_array_equal(again.rows, rows)
        np.testing.assert_array_equal(again.values, values)
        (_, _), loss, scores = _jit_all(model, batch)
        np.testing.assert_array_equal(scores, before)  # ranking never reads the sample
        losses.add(round(float(loss), 6))
    assert len(losses) > 1  # training does


def test_edge_sample_prefers_low_degree_edges_with_static_shapes(tiny):
    model = _model(tiny, dropout=0.8)
    keep = kept_edge_count(576, 0.8)
    assert model.num_kept_edges == keep == 115  # int(576 * (1 - 0.8)) truncates 115.2
    pairs = np.asarray(model.train_pairs[...])
    weight = 1 / np.sqrt(np.bincount(pairs[:, 0])[pairs[:, 0]] * np.bincount(pairs[:, 1])[pairs[:, 1]])
    index = {tuple(p): e for e, p in enumerate(pairs.tolist())}
    rng, counts, samples = np.random.default_rng(0), np.zeros(len(pairs)), set()
    for _ in range(40):
        model.pre_epoch(rng)
        assert model.masked_rows.shape == model.masked_cols.shape == model.masked_values.shape == (2 * keep,)
        kept = _kept_edges(model)
        counts[[index[e] for e in kept]] += 1
        samples.add(tuple(kept))
    assert len(samples) == 40  # a fresh sample every epoch
    # Degree-sensitive: the 100 edges of largest 1/sqrt(d_u d_i) are kept far more often than
    # the 100 smallest (a uniform sample keeps both about 20% of the time).
    order = np.argsort(weight)
    low, high = counts[order[:100]].mean() / 40, counts[order[-100:]].mean() / 40
    assert high > low + 0.1, (low, high)


def test_dropout_zero_trains_on_the_full_graph(hand):
    model = _model(hand, dropout=0.0)
    model.pre_epoch(np.random.default_rng(0))
    for part in ("rows", "cols", "values"):
        np.testing.assert_array_equal(getattr(model, f"masked_{part}")[...], getattr(model, f"full_{part}")[...])


def test_a_dropout_that_keeps_no_edge_is_refused(hand):
    with pytest.raises(ConfigError, match="dropout=0.9 keeps 0 of the 6 distinct train edges"):
        _model(hand, dropout=0.9)


@pytest.mark.parametrize("weighting", ["equal", "alpha"])
def test_features_are_frozen_constants_and_every_layer_trains(hand, weighting):
    model = _model(hand, fusion_mode="concat", weighting=weighting)
    kinds = {path[0]: type(v) for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
    for name in ("image_feat", "text_feat", "full_rows", "full_cols", "full_values", "train_pairs"):
        assert kinds[name] is Constant, name
    for name in ("masked_rows", "masked_cols", "masked_values"):
        assert kinds[name] is EpochSample, name
    layers = ("mm_concat", "id_mm_concat") if weighting == "equal" else ("all_concat",)
    expected = {"users", "items", *(f"{n}_{p}" for n in ("image_trs", "text_trs", *layers) for p in "wb")}
    expected |= {"mm_alpha"} if weighting == "alpha" else set()
    assert {name for name, v in kinds.items() if v is nnx.Param} == expected

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, grads = value_and_grad_constants_fixed(graphdef, params, rest, jnp.asarray(BATCH, jnp.int32))
    silent = [k for k, g in grads.items() if not float(jnp.abs(g[...]).max()) > 0]
    assert not silent and set(grads.keys()) == expected
    stepped = nnx.merge(graphdef, jax.tree.map(lambda p, g: p - 1.0 * g, params, grads), rest)
    assert not np.allclose(stepped.image_trs_w[...], model.image_trs_w[...])
    # The raw tables stay the dataset's (the reference freezes them; FREEDOM fine-tunes its own).
    for role in ("image", "text"):
        table = getattr(stepped, f"{role}_feat")[...]
        assert table.dtype == jnp.float32
        np.testing.assert_array_equal(table, hand.features[role].astype(np.float32))


def test_mean_and_sum_need_feat_embed_dim_equal_to_embedding_size():
    for fusion in ("mean", "sum"):
        with pytest.raises(ConfigError, match=r"MMGCFConfig\.feat_embed_dim and embedding_size and fusion_mode must have feat_embed_dim == embedding_size"):
            MMGCFConfig(embedding_size=8, feat_embed_dim=6, fusion_mode=fusion)
        assert MMGCFConfig(embedding_size=8, feat_embed_dim=8, fusion_mode=fusion).feat_embed_dim == 8
    assert build_config(MMGCF, {"embedding_size": 8, "feat_embed_dim": 6, "fusion_mode": "concat"}).feat_embed_dim == 6


def test_defaults_and_yaml_map_onto_the_config_and_trainer():
    config = packaged_config("mmgcf", MMGCFConfig)
    grid = config["model_config"]
    assert grid["n_ui_layers"] == [1, 2, 3] and grid["reg_weight"] == [0.1, 0.01, 0.001, 0.0001]
    assert grid["fusion_mode"] == list(FUSIONS) and grid["weighting"] == list(WEIGHTINGS) and grid["dropout"] == [0.2, 0.5, 0.8]
    assert (grid["embedding_size"], grid["feat_embed_dim"]) == (64, 64)
    assert config["train"]["valid_metric"] == "recall@20" and config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
    # Defaults: the YAML's fixed values and the first value of each grid.
    defaults = MMGCFConfig()
    first = {k: v[0] if isinstance(v, list) else v for k, v in grid.items()}
    assert {k: getattr(defaults, k) for k in first} == first
