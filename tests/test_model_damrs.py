"""DA-MRS: the behaviour graph against the authors' loop, the consistent kNN graphs, the forward and every loss term by hand, the quirks."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import hand_dataset, packaged_config
from mirrorgrad_jax.models import Constant
from mirrorgrad_jax.models.damrs import (
    DAMRS,
    DAMRSConfig,
    build_behaviour_graph,
    consistent_knn_graphs,
    torch_cpu_topk,
)

from mirrorgrad_jax.data import RecDataset, make_synthetic
from mirrorgrad_jax.graph import torch_cpu_topk_sparse
from mirrorgrad_jax.errors import UserInputError

D = 8
EPS = 1e-7  # compute_normalized_laplacian's degree epsilon


def _model(ds, **overrides):
    return DAMRS(ds, dataclasses.replace(DAMRSConfig(embedding_size=D), **overrides), rngs=nnx.Rngs(0))


def _dense(rows, cols, values, n):
    a = np.zeros((n, n))
    np.add.at(a, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
    return a


def _graph(model, name):
    return _dense(getattr(model, f"{name}_rows")[...], getattr(model, f"{name}_cols")[...], getattr(model, f"{name}_values")[...], model.num_items)


# ---------------------------------------------------------------------------------------
# The behaviour graph: build_iib_graph.py, transcribed literally.
# ---------------------------------------------------------------------------------------


def _lowest_id_topk(row, k):
    return sorted(sorted(range(len(row)), key=lambda j: (-row[j], j))[:k])


def _authors_item_graph_dict(train, num_item, top_k, topk=torch_cpu_topk, min_common=2):
    """``gen_item_matrix`` and the ``__main__`` loop of build_iib_graph.py, line for line (torch.topk -> ``topk``)."""
    edge_dict = defaultdict(set)
    for edge in train:
        user, item = int(edge[0]), int(edge[1])
        edge_dict[item].add(user)
    item_graph_matrix = [[0.0] * num_item for _ in range(num_item)]
    key_list = list(edge_dict.keys())
    key_list.sort()
    for head in range(len(key_list)):
        for rear in range(head + 1, len(key_list)):
            head_key = key_list[head]
            rear_key = key_list[rear]
            inter_len = len(edge_dict[head_key].intersection(edge_dict[rear_key]))
            if inter_len >= min_common:
                item_graph_matrix[head_key][rear_key] = inter_len
                item_graph_matrix[rear_key][head_key] = inter_len
    item_num = [sum(1 for v in item_graph_matrix[i] if v != 0) for i in range(num_item)]
    item_graph_dict = {}
    for i in range(num_item):
        k = min(item_num[i], top_k)
        indices = topk(item_graph_matrix[i], k)
        item_graph_dict[i] = [indices, [item_graph_matrix[i][j] for j in indices]]
    return item_graph_dict


def _dict_edges(item_graph_dict):
    return sorted((i, j, int(w)) for i, (js, ws) in item_graph_dict.items() for j, w in zip(js, ws))


def _built_edges(train, num_items, topk, **kwargs):
    rows, cols, counts = build_behaviour_graph(train, num_items, topk, **kwargs)
    return [(int(r), int(c), int(n)) for r, c, n in zip(rows, cols, counts)]


@pytest.mark.parametrize(
    "num_users, num_items, topk, seed",
    [(60, 40, 2, 30), (300, 150, 2, 4), (300, 150, 5, 4)],
    ids=["40-items-nth-element", "150-items-partial-sort", "150-items-top5-nth-element"],
)
def test_behaviour_graph_is_the_authors_dict(num_users, num_items, topk, seed):
    # torch's CPU topk selects with std::partial_sort when 64 k <= n, else std::nth_element:
    # the three cases cover both. Counts are small integers, so ties at the k-th place are common.
    train = make_synthetic(num_users=num_users, num_items=num_items, seed=seed).train
    expected = _authors_item_graph_dict(train, num_items, topk)
    assert _built_edges(train, num_items, topk) == _dict_edges(expected)
    lowest = _authors_item_graph_dict(train, num_items, topk, topk=_lowest_id_topk)
    assert _built_edges(train, num_items, topk, ties="lowest_id") == _dict_edges(lowest)
    # The tie rule matters on these data: the option is not ignored.
    assert _dict_edges(lowest) != _dict_edges(expected)


# torch.topk(torch.tensor(row), k).indices on the CPU, recorded with torch 2.14.1 (rows are 0
# except at the listed positions). In every case "lowest index first" answers otherwise.
RECORDED_TORCH_TOPK = [
    (5, 2, {0: 2, 1: 2, 4: 2}, [1, 4]),
    (9, 2, {1: 4, 2: 2, 4: 2}, [1, 4]),
    (20, 3, {2: 3, 4: 3, 5: 4, 6: 3, 8: 3, 13: 2, 14: 3, 16: 2, 18: 2}, [4, 5, 6]),
    (100, 2, {4: 2, 5: 4, 15: 2, 18: 2, 42: 2, 65: 2, 68: 2, 88: 2}, [5, 42]),
    (127, 2, {5: 2, 17: 2, 19: 2, 29: 3, 51: 2, 60: 2, 65: 2}, [17, 29]),
    (128, 2, {9: 2, 10: 2, 14: 2, 15: 2, 19: 2, 39: 4, 95: 2}, [10, 39]),
    (200, 3, {9: 2, 11: 4, 19: 2, 118: 2, 124: 2, 175: 3}, [11, 19, 175]),
    (1000, 5, {47: 2, 178: 2, 497: 4, 569: 4, 758: 2, 771: 4, 799: 2, 902: 3}, [178, 497, 569, 771, 902]),
    (7050, 2, {339: 2, 1246: 2, 3808: 2, 4374: 3, 4830: 2}, [1246, 4374]),
]


@pytest.mark.parametrize("n, k, nonzero, expected", RECORDED_TORCH_TOPK, ids=[f"n{c[0]}-k{c[1]}" for c in RECORDED_TORCH_TOPK])
def test_torch_cpu_topk_reproduces_recorded_torch_answers(n, k, nonzero, expected):
    row = np.zeros(n)
    row[list(nonzero)] = list(nonzero.values())
    assert torch_cpu_topk(row, k) == expected
    assert _lowest_id_topk(row.tolist(), k) != expected
    cols = np.asarray(sorted(nonzero))
    assert torch_cpu_topk_sparse(cols, row[cols], n, k) == expected  # the builder's shortcut


# ---------------------------------------------------------------------------------------
# A tiny dataset with structured features: the hand fixture's interactions, features in
# which items 0, 1, 2 are alike in both modalities (in different orders) and item 3 apart.
# ---------------------------------------------------------------------------------------


def _structured_hand() -> RecDataset:
    hand = hand_dataset()
    rng = np.random.default_rng(7)
    image = 1e-3 * rng.normal(size=(4, 128))
    text = 1e-3 * rng.normal(size=(4, 64))
    image[:, :3] += [[1, 0.0, 0], [1, 0.1, 0], [1, 0.3, 0], [0, 0, 1]]
    text[:, :3] += [[1, 0.0, 0], [1, 0.3, 0], [1, 0.1, 0], [0, 0, 1]]
    return RecDataset.from_arrays("structured-hand", hand.train, hand.valid, hand.test, {"image": image, "text": text}, verbose=False)


def _reference_knn(image, text, knn_k):
    """``get_knn_adj_mat`` in float64 NumPy, dense (stable argsort: ties to the lower index)."""
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    v_sim, t_sim = unit(image) @ unit(image).T, unit(text) @ unit(text).T
    mask_v, mask_t = v_sim < v_sim.mean(), t_sim < t_sim.mean()
    t_sim[mask_v] = 0
    v_sim[mask_t] = 0
    t_sim[mask_t] = 0
    v_sim[mask_v] = 0
    n = len(v_sim)
    pattern_v, pattern_t = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        item_num = len(np.flatnonzero(t_sim[i]))
        k = min(item_num, knn_k)
        pattern_v[i, np.argsort(-v_sim[i], kind="stable")[:k]] = 1
        pattern_t[i, np.argsort(-t_sim[i], kind="stable")[:k]] = 1

    def laplacian(a):
        r = a.sum(1) + EPS
        return a / np.sqrt(r[:, None] * r[None, :])

    return laplacian(pattern_v), laplacian(pattern_t)


def _reference_session(item_graph_dict, n):
    """``get_session_adj``: self-loops plus the dict's edges, every value 1, then compute_normalized_laplacian."""
    index_x, index_y = [], []
    for i in range(n):
        index_x.append(i)
        index_y.append(i)
        if i in item_graph_dict:
            for j in item_graph_dict[i][0]:
                index_x.append(i)
                index_y.append(j)
    a = _dense(index_x, index_y, np.ones(len(index_x)), n)
    r = a.sum(1) + EPS
    return a / np.sqrt(r[:, None] * r[None, :])


def test_consistent_knn_graphs_by_hand():
    rng = np.random.default_rng(11)
    # 12 items in 3 groups; the image and text groupings overlap only partly, so the joint
    # mask removes pairs either modality alone would keep, and rows keep 1 to 4 entries.
    groups_v, groups_t = np.repeat([0, 1, 2], 4), np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 0, 2, 2])
    image = np.eye(3)[groups_v] @ rng.normal(size=(3, 20)) + 0.6 * rng.normal(size=(12, 20))
    text = np.eye(3)[groups_t] @ rng.normal(size=(3, 16)) + 0.6 * rng.normal(size=(12, 16))
    expected_v, expected_t = _reference_knn(image, text, 3)
    counts = (expected_t > 0).sum(1)
    assert counts.min() < 3 and counts.max() == 3, counts  # the cap and the short rows both occur
    assert not np.array_equal(expected_v > 0, expected_t > 0)  # the two graphs differ
    for chunk in (12, 5):  # one block; three blocks, the last padded
        graph_v, graph_t = consistent_knn_graphs(image, text, 3, chunk_size=chunk)
        got_v, got_t = (_dense(g.rows, g.cols, g.values, 12) for g in (graph_v, graph_t))
        np.testing.assert_array_equal(got_v > 0, expected_v > 0)
        np.testing.assert_array_equal(got_t > 0, expected_t > 0)
        # float32 values of 1/sqrt((k_i + 1e-7)(k_j + 1e-7)): 1e-6 relative.
        np.testing.assert_allclose(got_v, expected_v, rtol=1e-6)
        np.testing.assert_allclose(got_t, expected_t, rtol=1e-6)
    # Without the joint mask (plain top-3 of each modality) the image graph would be another.
    plain = np.zeros((12, 12))
    unit = image / np.linalg.norm(image, axis=1, keepdims=True)
    plain[np.repeat(np.arange(12), 3), np.argsort(-(unit @ unit.T), axis=1, kind="stable")[:, :3].ravel()] = 1
    assert not np.array_equal(plain > 0, expected_v > 0)


def test_graphs_of_the_model_by_hand():
    ds = _structured_hand()
    model = _model(ds, knn_k=2, behaviour_min_common_users=1, pseudo_positives=1)
    expected_v, expected_t = _reference_knn(ds.features["image"].astype(np.float64), ds.features["text"].astype(np.float64), 2)
    # Items 0-2 keep 3 consistent pairs, capped at 2, by image order in one graph and text order in the other.
    assert (expected_v > 0).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    assert (expected_t > 0).tolist() == [[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    np.testing.assert_allclose(_graph(model, "image"), expected_v, rtol=1e-6)
    np.testing.assert_allclose(_graph(model, "text"), expected_t, rtol=1e-6)
    # The hand train pairs share at most one user per item pair: at the script's threshold 2 there is
    # no behaviour edge (self-loops only); at 1 every co-interacted pair is a neighbour.
    only_loops = _model(ds, knn_k=2, pseudo_positives=1)
    np.testing.assert_allclose(_graph(only_loops, "session"), np.eye(4) / (1 + EPS), rtol=1e-6)
    expected_s = _reference_session(_authors_item_graph_dict(ds.train, 4, 2, min_common=1), 4)
    assert (expected_s > 0).sum() == 4 + 6
    np.testing.assert_allclose(_graph(model, "session"), expected_s, rtol=1e-6)


def test_behaviour_counts_option_keeps_the_weights():
    # 5 users on items 0-2: items 0 and 1 share 4 users, 0 and 2 share 2, 1 and 2 share 2.
    train = [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2], [3, 0], [3, 1], [3, 2], [4, 2]]
    ds = RecDataset.from_arrays("counts", train, [[4, 0]], [[4, 1]], {"image": np.eye(3, 128) + 0.1, "text": np.eye(3, 64) + 0.1}, verbose=False)
    binary, counts = (_model(ds, knn_k=1, pseudo_positives=1, behaviour_values=v) for v in ("binary", "counts"))
    weights = np.array([[1, 4, 2], [4, 1, 2], [2, 2, 1]], np.float64)  # self-loop 1, counts elsewhere
    np.testing.assert_allclose(_graph(binary, "session"), _reference_session({0: [[1, 2], [4, 2]], 1: [[0, 2], [4, 2]], 2: [[0, 1], [2, 2]]}, 3), rtol=1e-6)
    r = weights.sum(1) + EPS
    np.testing.assert_allclose(_graph(counts, "session"), weights / np.sqrt(r[:, None] * r[None, :]), rtol=1e-6)
    assert not np.allclose(_graph(binary, "session"), _graph(counts, "session"))


# ---------------------------------------------------------------------------------------
# Forward and loss by hand (float64 NumPy against the float32 model).
# ---------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _hand_forward(model, ds):
    n_u, n_i = ds.num_users, ds.num_items
    a = np.zeros((n_u + n_i,) * 2)
    for u, i in ds.train:
        a[u, n_u + i] = a[n_u + i, u] = 1.0
    deg = a.sum(1) + EPS
    a = a / np.sqrt(deg[:, None] * deg[None, :])
    e_u, e_i = np.asarray(model.users[...], np.float64), np.asarray(model.items[...], np.float64)
    layers = [np.concatenate([e_u, e_i])]
    for _ in range(model.config.n_ui_layers):
        layers.append(a @ layers[-1])
    mean = np.mean(layers, axis=0)
    views = {}
    for name in ("text", "image", "session"):
        views[name] = np.linalg.matrix_power(_graph(model, name), model.config.n_mm_layers) @ e_i
    return mean[:n_u], mean[n_u:], views["text"], views["image"], views["session"]


def _hand_terms(model, ds, batch, **changes):
    """Every term of calculate_loss in float64, written from the reference's formulas (``changes``: config fields)."""
    cfg = dataclasses.replace(model.config, **changes)
    users, pos, neg = batch
    u_all, i_all, h_t, h_v, h_s = _hand_forward(model, ds)
    u_ids, i_ids = np.unique(users), np.unique(np.concatenate([pos, neg]))  # torch.unique
    h = {"t": h_t, "v": h_v, "s": h_s}
    cos = {m: _unit(x[i_ids]) @ _unit(x).T for m, x in h.items()}
    prob = {m: _softmax(c) for m, c in cos.items()}
    rows = np.arange(len(i_ids))[:, None]
    neighbour = []
    for own, a, b in (("s", "t", "v"), ("v", "t", "s"), ("t", "v", "s")):
        mm = np.argsort(-(prob[a] + prob[b] + prob[own] + prob[own]), axis=1, kind="stable")[:, : cfg.pseudo_positives]
        masked = prob[own].copy()
        masked[rows, mm] = 0
        single = np.argsort(-masked, axis=1, kind="stable")[:, : cfg.pseudo_positives]
        e = np.exp(cos[own] / cfg.temperature)
        total, mm_score, single_score = e.sum(1), e[rows, mm].sum(1), e[rows, single].sum(1)
        neighbour.append(np.mean(-np.log(mm_score / total + 1e-9) - np.log(single_score / (total - mm_score) + 1e-9)))
    p_g = _sigmoid(u_all[u_ids] @ _unit(i_all[i_ids]).T)
    p_t = _sigmoid(u_all[u_ids] @ _unit(((h_t + h_s + h_v) / 3)[i_ids]).T)

    def kl(p1, p2):
        return p1 * np.log(p1) - p1 * np.log(p2) + (1 - p1) * np.log(1 - p1) - (1 - p1) * np.log(1 - p2)

    u = u_all[users]
    q = _sigmoid(np.stack([np.sum(u * _unit(x[pos]), 1) for x in (h_t, h_s, h_v)]))
    r = _sigmoid(np.stack([np.sum(u * _unit(x[neg]), 1) for x in (h_t, h_s, h_v)]))
    r_mean = r.mean() if cfg.negative_mean == "batch" else r.mean(0)
    w_pos = np.clip(q.mean(0) * np.exp(-q.var(0, ddof=1)) ** 2, 0, 1)
    w_neg = np.clip((q.max(0) - r_mean) * (q.mean(0) < r_mean), 0, 1)
    items = i_all + (h_t + h_v + h_s) / 3
    s_pos, s_neg = np.sum(u * items[pos], 1), np.sum(u * items[neg], 1)
    bpr = -np.mean(np.log(_sigmoid(s_pos - s_neg)) * w_pos + np.log(_sigmoid(s_neg - s_pos)) * w_neg)
    return {"bpr": bpr, "neighbour": sum(neighbour) / 3, "kl": np.mean(kl(p_g, p_t) + kl(p_t, p_g)), "w_pos": w_pos, "w_neg": w_neg}


# Repeated users and items: 3 distinct users of 5 rows, 4 distinct items of 10 slots.
HAND_BATCH = np.array([[0, 0, 2, 1, 2], [1, 0, 3, 2, 0], [3, 3, 1, 0, 2]])


@pytest.fixture(scope="module")
def hand_model():
    ds = _structured_hand()
    model = _model(ds, knn_k=2, behaviour_min_common_users=1, pseudo_positives=1, neighbor_weight=0.5, kl_weight=2.0)
    rng = np.random.default_rng(5)
    model.users[...] = jnp.asarray(rng.normal(size=(3, D)), jnp.float32)
    model.items[...] = jnp.asarray(rng.normal(size=(4, D)), jnp.float32)
    return ds, model


@nnx.jit
def _outputs(model, batch):
    """Everything the hand tests compare, in one compilation per config."""
    forward = model.forward()
    weights = model.modal_weights(batch[0], batch[1], batch[2], forward[0], forward[2], forward[3], forward[4])
    return model.loss_terms(batch), model.loss(batch, jax.random.key(0)), forward, model.scores(jnp.arange(3)), weights


@pytest.fixture(scope="module")
def hand_outputs(hand_model):
    return _outputs(hand_model[1], jnp.asarray(HAND_BATCH, jnp.int32))


def test_forward_and_scores_by_hand(hand_model, hand_outputs):
    ds, model = hand_model
    u, i, h_t, h_v, h_s = _hand_forward(model, ds)
    _, _, got, scores, _ = hand_outputs
    # float32 propagation of O(1) numbers over two or three sparse products: 1e-5 relative.
    for g, e in zip(got, (u, i, h_t, h_v, h_s)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, u @ (i + (h_v + h_t + h_s) / 3).T, rtol=1e-5, atol=1e-6)


def test_every_loss_term_by_hand(hand_model, hand_outputs):
    ds, model = hand_model
    expected = _hand_terms(model, ds, HAND_BATCH)
    # Both weight branches occur: some rows have w- > 0, the others 0.
    assert (expected["w_neg"] > 0).any() and (expected["w_neg"] == 0).any()
    terms, loss, _, _, weights = hand_outputs
    # float32 against float64: a few dozen operations on O(1) values; exp(cos / 0.2) multiplies
    # a cosine's rounding by 5. 1e-5 relative is 10x that error and far below any wrong term.
    for name in ("bpr", "neighbour", "kl"):
        np.testing.assert_allclose(float(terms[name]), expected[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(weights[0], expected["w_pos"], rtol=1e-5)
    np.testing.assert_allclose(weights[1], expected["w_neg"], rtol=1e-5, atol=1e-7)
    total = expected["bpr"] + 0.5 * expected["neighbour"] + 2.0 * expected["kl"]
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)


# The same shape, with user 1 and item 3 absent: the packed distinct sets have empty slots.
SPARSE_BATCH = np.array([[0, 0, 2, 2, 0], [1, 0, 2, 2, 0], [0, 1, 1, 0, 2]])


@pytest.mark.parametrize(
    ("ids", "capacity", "slots"),
    [
        ([3, 1, 3, 0, 1], 5, 5),  # capacity equal to the length: the sorted ids, the repeats masked
        ([3, 1, 3, 0, 1], 9, 5),  # capacity above the length: the same
        ([3, 1, 3, 0, 1], 4, 4),  # packed, one empty slot (id 2 absent)
        ([2, 1, 0, 1, 2, 0], 3, 3),  # packed, every id present
        ([5, 5, 5], 2, 2),  # one distinct id
    ],
)
def test_distinct_holds_torch_uniques_ids_in_fixed_slots(ids, capacity, slots):
    from mirrorgrad_jax.models.damrs import _distinct

    got, mask = _distinct(jnp.asarray(ids), capacity)
    assert got.shape == mask.shape == (slots,)
    np.testing.assert_array_equal(np.asarray(got)[np.asarray(mask)], np.unique(ids))
    if capacity < len(ids):
        assert not np.asarray(mask)[np.unique(ids).size :].any()  # the real slots come first


def test_loss_terms_by_hand_when_ids_are_missing_from_the_batch(hand_model):
    # 3 users and 4 items in 5 rows: the distinct sets are packed into 3 and 4 slots, and here
    # one of each is empty. The terms still average over the distinct ids only (np.unique).
    ds, model = hand_model
    expected = _hand_terms(model, ds, SPARSE_BATCH)
    terms, loss, _, _, _ = _outputs(model, jnp.asarray(SPARSE_BATCH, jnp.int32))
    for name in ("bpr", "neighbour", "kl"):  # the tolerance of test_every_loss_term_by_hand
        np.testing.assert_allclose(float(terms[name]), expected[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(loss), expected["bpr"] + 0.5 * expected["neighbour"] + 2.0 * expected["kl"], rtol=1e-5)


def test_options_negative_mean_pseudo_positives_and_temperature(hand_model, hand_outputs):
    # One model with the three changed (one compilation): the hand terms with all three match
    # it, and each change alone moves the hand terms, so ignoring any of them would fail.
    ds, model = hand_model
    changes = {"negative_mean": "pair", "pseudo_positives": 2, "temperature": 0.5}
    other = DAMRS(ds, dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0))
    other.users[...], other.items[...] = model.users[...], model.items[...]
    terms, _, _, _, weights = _outputs(other, jnp.asarray(HAND_BATCH, jnp.int32))
    expected = _hand_terms(other, ds, HAND_BATCH)
    for name in ("bpr", "neighbour", "kl"):
        np.testing.assert_allclose(float(terms[name]), expected[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(weights[1], expected["w_neg"], rtol=1e-5, atol=1e-7)
    base = _hand_terms(model, ds, HAND_BATCH)
    assert not np.allclose(expected["w_neg"], base["w_neg"])
    assert abs(_hand_terms(model, ds, HAND_BATCH, negative_mean="pair")["bpr"] - base["bpr"]) > 1e-4
    for change in ({"pseudo_positives": 2}, {"temperature": 0.5}):
        assert abs(_hand_terms(model, ds, HAND_BATCH, **change)["neighbour"] - base["neighbour"]) > 1e-3, change


def test_only_the_id_tables_train_and_the_weights_carry_no_gradient(hand_model):
    _, model = hand_model
    params = nnx.state(model, nnx.Param)
    assert sorted(params.keys()) == ["items", "users"]
    # d (U + I); MMRec's printed count adds the unused projections and the frozen feature tables.
    assert model.num_trainable_params() == D * (3 + 4)
    u, i, d, f_v, f_t = 19_445, 7_050, 64, 4_096, 384  # Baby, as in the authors' DA-MRS+LightGCN log
    assert d * (u + i) + i * (f_v + f_t) + (f_v + 1) * d + (f_t + 1) * d == 33_566_528
    others = [type(v) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable) and not isinstance(v, nnx.Param)]
    assert others and all(t is Constant for t in others)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = jnp.asarray(HAND_BATCH, jnp.int32)

    @jax.jit
    @jax.grad
    def weights_grad(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        out = m.forward()
        w = m.modal_weights(*batch, out[0], out[2], out[3], out[4])
        return jnp.sum(w[0]) + jnp.sum(w[1])

    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(weights_grad(params)))


def test_unusable_settings_are_refused(hand_model):
    ds, _ = hand_model
    with pytest.raises(UserInputError, match="pseudo_positives=5 exceeds the number of items"):
        _model(ds, knn_k=2, pseudo_positives=5)
    one = RecDataset.from_arrays("one", ds.train, ds.valid, ds.test, {"text": ds.features["text"]}, verbose=False)
    with pytest.raises(UserInputError, match="both an image and a text"):
        _model(one, knn_k=2, pseudo_positives=1)


def test_yaml_is_mmrecs_grid():
    config = packaged_config("damrs", DAMRSConfig)
    grid = config["model_config"]
    assert (grid["kl_weight"], grid["neighbor_weight"], grid["n_mm_layers"], grid["n_ui_layers"], grid["knn_k"]) == ([1.0], [0.001], [1], [2], 10)
    assert grid["behaviour_topk"] == 2 and grid["behaviour_min_common_users"] == 2
    assert config["train"]["valid_metric"] == "recall@20" and config["train"]["learning_rate"] == [0.001]
    assert config["mg"] == {"alpha1": 1.0, "alpha2": [0.1, 0.2, 0.3], "beta": 3}


def test_pseudo_labels_over_a_long_catalogue_are_the_stable_argsorts(hand_model):
    """700 items and 10 positives: the single-modality labels take top_k_positions' block path."""
    _, model = hand_model
    k = 10
    rng = np.random.default_rng(11)
    # Probabilities on a coarse grid, so rows hold many ties (they go to the lower item).
    own, a, b = (np.round(rng.dirichlet(np.ones(700), size=(2, 6)), 3).astype(np.float32) for _ in range(3))
    config = dataclasses.replace(model.config, pseudo_positives=k)
    mm, single = DAMRS.pseudo_labels(type("Stand-in", (), {"config": config})(), jnp.asarray(own), jnp.asarray(a), jnp.asarray(b))
    # The reference's two torch.topk calls, as numpy stable sorts (ties: the lower item).
    want_mm = np.argsort(-(a + b + own + own), axis=-1, kind="stable")[..., :k]
    masked = own.copy()
    np.put_along_axis(masked, want_mm, 0.0, axis=-1)
    np.testing.assert_array_equal(np.asarray(mm), want_mm)
    np.testing.assert_array_equal(np.asarray(single), np.argsort(-masked, axis=-1, kind="stable")[..., :k])
