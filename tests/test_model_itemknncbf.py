"""ItemKNNCBF: the shrunk content kNN graph, scores R S by hand, no training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.evaluation import RankingEvaluator
from mirrorgrad_jax.graph import knn_topk_shrink
from mirrorgrad_jax.models import Constant
from mirrorgrad_jax.models.itemknncbf import ItemKNNCBF, ItemKNNCBFConfig, padded_train_items
from helpers import jit_loss, jit_scores, packaged_config


def _model(ds, **overrides):
    return ItemKNNCBF(ds, dataclasses.replace(ItemKNNCBFConfig(), **overrides), rngs=nnx.Rngs(0))


def _dense_similarity(features, k, shrink):
    """The reference's dense S: top-k VALUES of f_i.f_j / (|f_i||f_j| + shrink) per row, zeros elsewhere."""
    f = np.asarray(features, np.float64)
    norms = np.linalg.norm(f, axis=1)
    sim = (f @ f.T) / (norms[:, None] * norms[None, :] + shrink)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    dense = np.zeros_like(sim)
    np.put_along_axis(dense, top, np.take_along_axis(sim, top, 1), axis=1)
    return dense


def _dense_r(ds):
    r = np.zeros((ds.num_users, ds.num_items))
    r[ds.train[:, 0], ds.train[:, 1]] = 1.0
    return r


def _concat_features(ds):
    return np.concatenate([ds.features["image"], ds.features["text"]], axis=1)  # image first, as the reference


def test_no_training_and_no_parameters(hand):
    model = _model(hand, knn_k=2)
    assert ItemKNNCBF.trainable is False and ItemKNNCBF.multimodal
    assert model.num_trainable_params() == 0  # the reference registers a 2-float dummy
    assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 0
    assert set(nnx.state(model, Constant).keys()) == {"neighbour_idx", "neighbour_val", "user_items"}
    loss = jit_loss(model, jnp.zeros((3, 4), jnp.int32), jax.random.key(0))
    assert loss.shape == () and float(loss) == 0.0


def test_similarity_lists_match_the_dense_top_k_in_any_chunking(tiny):
    features = _concat_features(tiny)
    dense = _dense_similarity(features, 10, 10.0)
    for chunk in (7, 2048):  # 7 does not divide 40 items: the padded last block is dropped
        idx, val = knn_topk_shrink(features, 10, 10.0, chunk_size=chunk)
        assert idx.shape == val.shape == (40, 10) and idx.dtype == jnp.int32
        got = np.zeros((40, 40))
        np.put_along_axis(got, np.asarray(idx), np.asarray(val, np.float64), axis=1)
        # float32 dot products of 192-d rows against float64: 1e-5 relative.
        np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(np.asarray(val), axis=1) <= 0)  # sorted by decreasing value
    # The shrink term: with shrink 0 the self-similarity is exactly 1 (the cosine).
    idx0, val0 = knn_topk_shrink(features, 1, 0.0)
    np.testing.assert_array_equal(idx0[:, 0], np.arange(40))
    np.testing.assert_allclose(val0[:, 0], 1.0, rtol=1e-6)


def test_shrink_graph_docstring_example_and_errors():
    idx, val = knn_topk_shrink(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]), k=1, shrink=1.0)
    assert idx[:, 0].tolist() == [1, 1, 2]
    np.testing.assert_allclose(val[:, 0], [2 / 3, 0.8, 0.9], rtol=1e-6)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.3"):
        knn_topk_shrink(np.ones((3, 2)), k=4)
    with pytest.raises(ValueError, match="shrink must be a finite number >= 0"):
        knn_topk_shrink(np.ones((3, 2)), k=1, shrink=-1.0)
    # shrink 0 and an all-zero row: similarity 0 instead of the reference's NaN.
    _, val = knn_topk_shrink(np.array([[0.0, 0.0], [1.0, 0.0]]), k=2, shrink=0.0)
    assert np.all(np.isfinite(val))


def test_scores_equal_dense_r_times_s_by_hand(hand, tiny):
    for ds, k in ((hand, 2), (tiny, 10)):
        model = _model(ds, knn_k=k)
        expected = _dense_r(ds) @ _dense_similarity(_concat_features(ds), k, 10.0)
        users = jnp.arange(ds.num_users)
        # Sums of at most |train(u)| float32 similarities: 1e-5 relative.
        np.testing.assert_allclose(jit_scores(model, users), expected, rtol=1e-5, atol=1e-6)
    # A block of users in any order returns their rows.
    np.testing.assert_allclose(jit_scores(model, jnp.asarray([5, 0, 5])), expected[[5, 0, 5]], rtol=1e-5, atol=1e-6)


def test_padded_train_items():
    train = np.array([[0, 3], [2, 1], [0, 1], [2, 0], [0, 2]])
    got = padded_train_items(train, 4, pad=9)
    np.testing.assert_array_equal(got, [[1, 2, 3], [9, 9, 9], [0, 1, 9], [9, 9, 9]])


def test_ranks_through_the_evaluator_like_the_dense_scores(tiny):
    model = _model(tiny)
    graphdef, state = nnx.split(model)
    evaluator = RankingEvaluator(tiny.num_items, tiny.train, tiny.test, topk=(5, 10, 20), user_block=32)
    got = evaluator.evaluate(lambda s, users: nnx.merge(graphdef, s).scores(users), state)
    dense = jnp.asarray(_dense_r(tiny) @ _dense_similarity(_concat_features(tiny), 10, 10.0), jnp.float32)
    expected = evaluator.evaluate(lambda s, users: s[users], dense)
    assert got == expected and got["recall@20"] > 0.0


def test_one_modality_alone(tiny):
    # Same sizes as `tiny`; the reference uses whichever of the two tables exists.
    text_only = make_synthetic(num_users=60, num_items=40, modalities={"text": 64}, seed=1)
    with pytest.warns(UserWarning, match="no 'image' modality"):
        model = ItemKNNCBF(text_only, ItemKNNCBFConfig(), rngs=nnx.Rngs(0))
    idx, _ = knn_topk_shrink(text_only.features["text"], 10, 10.0)
    np.testing.assert_array_equal(model.neighbour_idx[...], idx)
    other = make_synthetic(num_users=60, num_items=40, modalities={"audio": 64}, seed=1)
    with pytest.raises(ValueError, match=r"ItemKNNCBF needs an image and/or a text.*\['audio'\]"):
        ItemKNNCBF(other, ItemKNNCBFConfig(), rngs=nnx.Rngs(0))


def test_yaml_maps_onto_the_config_and_trainer():
    config = packaged_config("itemknncbf", ItemKNNCBFConfig)
    assert (config["model_config"]["knn_k"], config["model_config"]["shrink"]) == (10, 10.0)
    assert config["mg"] == {"enabled": False}  # nothing to train, so nothing to mirror
