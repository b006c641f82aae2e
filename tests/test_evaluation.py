"""Full-ranking evaluation matches a slow loop-based reference; early stopping follows the reference rule."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mirrorgrad_jax.evaluation import (
    DEFAULT_TOPK,
    EarlyStopping,
    RankingEvaluator,
    SplitEvaluators,
    masked_top_k_hits,
    ranking_metrics,
)


def _table_scores(params, user_ids):
    return params[user_ids]


# --------------------------------------------------------------------------------------
# Slow reference: plain loops over users and ranks, written from the formulas.


def _slow_top_k(score_table, num_items, train, targets, k_max):
    users = []
    for u, _ in targets:
        if u not in users:
            users.append(int(u))
    lists, positives = [], []
    for u in users:
        row = np.asarray(score_table[u], np.float32).copy()
        for tu, ti in train:
            if tu == u:
                row[ti] = np.float32(-1e10)
        order = sorted(range(num_items), key=lambda i: (-float(row[i]), i))  # stable: ties to lower id
        lists.append(order[:k_max])
        positives.append([int(i) for tu, i in targets if tu == u])
    return users, lists, positives


def _slow_metrics(lists, positives, topk):
    out = {}
    for name in ("recall", "ndcg", "precision", "map"):
        for k in topk:
            total = 0.0
            for ranked, pos in zip(lists, positives):
                n = len(pos)
                hit = [1.0 if ranked[r] in pos else 0.0 for r in range(k)]
                if name == "recall":
                    value = sum(hit) / n
                elif name == "precision":
                    value = sum(hit) / k
                elif name == "ndcg":
                    dcg = sum(hit[r] / math.log2(r + 2) for r in range(k))
                    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, n)))
                    value = dcg / idcg
                else:
                    ap = 0.0
                    for r in range(k):
                        if hit[r]:
                            ap += sum(hit[: r + 1]) / (r + 1)
                    value = ap / min(k, n)
                total += value
            out[f"{name}@{k}"] = total / len(lists)
    return out


def _random_case(seed, num_users, num_items, max_targets, tie_levels):
    """Random scores (with ties when tie_levels), train pairs and targets in shuffled user order."""
    rng = np.random.default_rng(seed)
    if tie_levels:
        table = rng.integers(0, tie_levels, size=(num_users, num_items)).astype(np.float32)
    else:
        table = rng.normal(size=(num_users, num_items)).astype(np.float32)
    train = []
    for u in range(num_users):
        n_train = int(rng.integers(0, 8)) if u % 5 else 0  # every 5th user has no train items
        train += [(u, int(i)) for i in rng.choice(num_items, n_train, replace=False)]
    train = np.array(train, np.int64)
    eval_users = rng.permutation(num_users)[: num_users - 4]  # some users are not evaluated
    targets = []
    for j, u in enumerate(eval_users):
        n_t = 1 if j % 4 == 0 else int(rng.integers(1, max_targets + 1))  # single positives included
        targets += [(int(u), int(i)) for i in rng.choice(num_items, n_t, replace=False)]
    # a target that is also a train item: the mask must hide it
    u_tr, i_tr = train[train[:, 0] == eval_users[1]][0]
    targets.append((int(u_tr), int(i_tr)))
    table[u_tr, i_tr] = table.max() + 1.0
    targets = np.array(targets, np.int64)
    targets = targets[rng.permutation(len(targets))]  # interleave users: first appearance order matters
    return table, train, targets


@pytest.mark.parametrize(
    "seed,num_items,topk,max_targets,tie_levels",
    [
        (0, 64, DEFAULT_TOPK, 12, 0),  # continuous scores, default cutoffs
        (1, 64, DEFAULT_TOPK, 60, 3),  # heavy ties; users with more positives than K
        (2, 30, (1, 3, 7), 15, 4),  # small cutoffs, more positives than K_max
    ],
)
def test_evaluator_matches_slow_reference(seed, num_items, topk, max_targets, tie_levels):
    table, train, targets = _random_case(seed, 25, num_items, max_targets, tie_levels)
    # 21 evaluated users in blocks of 8: 3 blocks, the last with 3 padding rows
    evaluator = RankingEvaluator(num_items, train, targets, topk=topk, user_block=8)
    assert evaluator.num_users == 21

    users, lists, positives = _slow_top_k(table, num_items, train, targets, max(topk))
    np.testing.assert_array_equal(evaluator.user_ids, users)
    np.testing.assert_array_equal(evaluator.num_positives, [len(p) for p in positives])
    assert any(len(p) > max(topk) for p in positives) == (max_targets > max(topk))
    assert any(len(p) == 1 for p in positives)
    np.testing.assert_array_equal(evaluator.top_k(_table_scores, jnp.asarray(table)), lists)

    got = evaluator.evaluate(_table_scores, jnp.asarray(table), round_to=None)
    expected = _slow_metrics(lists, positives, topk)
    assert list(got) == list(expected)
    # The hit lists agree exactly, so only float64 summation order differs (~1e-15); a single
    # differing hit would move a mean by >= 1/(21 * 50 * 60) ~ 1.6e-5, far above 1e-6.
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key

    rounded = evaluator.evaluate(_table_scores, jnp.asarray(table))
    for key in expected:
        assert rounded[key] == pytest.approx(round(got[key], 4), abs=1e-12), key
        assert rounded[key] == round(rounded[key], 4)
    assert any(rounded[k] != got[k] for k in got)  # rounding actually changed something


# --------------------------------------------------------------------------------------
# ranking_metrics by hand


def test_ranking_metrics_hand_computed():
    # user A: hits [1, 0, 1], n = 2;  user B: hits [0, 1, 0], n = 5
    hits = np.array([[1, 0, 1], [0, 1, 0]], bool)
    n = np.array([2, 5])
    got = ranking_metrics(hits, n, topk=(1, 3), round_to=None)
    l3 = math.log2(3)
    expected = {
        # @1: A hit at rank 1 -> recall 1/2, precision 1, ndcg 1/1, map 1/min(1,2)=1; B: all 0
        "recall@1": (1 / 2 + 0) / 2,
        "recall@3": (2 / 2 + 1 / 5) / 2,  # A 2 hits of 2, B 1 hit of 5 (divisor n, not min(k, n))
        "ndcg@1": (1 + 0) / 2,
        # A: (1 + 1/log2 4) / (1 + 1/log2 3);  B: (1/log2 3) / (1 + 1/log2 3 + 1/2)
        "ndcg@3": ((1 + 0.5) / (1 + 1 / l3) + (1 / l3) / (1 + 1 / l3 + 0.5)) / 2,
        "precision@1": (1 + 0) / 2,
        "precision@3": (2 / 3 + 1 / 3) / 2,
        # A: (P@1 + P@3) / min(3, 2) = (1 + 2/3) / 2;  B: P@2 / min(3, 5) = (1/2) / 3
        "map@1": (1 + 0) / 2,
        "map@3": ((1 + 2 / 3) / 2 + (1 / 2) / 3) / 2,
    }
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert ranking_metrics(hits, n, topk=(1, 3))["ndcg@3"] == round(expected["ndcg@3"], 4)


def test_ranking_metrics_add_the_users_in_order_as_the_reference_mean_does():
    """The reference averages a (users, K) matrix with ``mean(axis=0)``, which adds the users
    one after another; ``np.mean`` of a column adds them pairwise, a last-bit difference that
    can flip the 4-decimal rounding early stopping compares. Exact equality with a literal
    in-order sum (no tolerance: the same float64 additions in the same order)."""
    rng = np.random.default_rng(7)
    hits = rng.random((3000, 20)) < 0.2
    n = rng.integers(1, 30, size=3000)
    got = ranking_metrics(hits, n, topk=(5, 20), round_to=None)
    per_user = {key: [ranking_metrics(hits[u : u + 1], n[u : u + 1], topk=(5, 20), round_to=None)[key] for u in range(0, 3000)] for key in ("ndcg@20", "map@5")}
    for key, values in per_user.items():
        total = 0.0
        for value in values:
            total += value
        assert got[key] == total / len(values), key


def test_ranking_metrics_rejects_bad_input():
    hits = np.ones((2, 3), bool)
    with pytest.raises(ValueError, match="num_positives >= 1"):
        ranking_metrics(hits, np.array([1, 0]), topk=(3,))
    with pytest.raises(ValueError, match="largest cutoff"):
        ranking_metrics(hits, np.array([1, 1]), topk=(5,))
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(hits, np.array([1, 1, 1]), topk=(3,))


# --------------------------------------------------------------------------------------
# masking and compilation


def test_train_items_never_in_top_k_and_padding_masks_nothing():
    num_items = 40
    rng = np.random.default_rng(7)
    table = rng.normal(size=(6, num_items)).astype(np.float32)
    table[:, :10] += 100.0  # items 0..9 score highest for everyone
    train = np.array([(u, i) for u in range(5) for i in range(10)], np.int64)  # user 5 has no train items
    targets = np.array([(u, 0) for u in range(6)], np.int64)
    evaluator = RankingEvaluator(num_items, train, targets, topk=(5, 20), user_block=4)
    top = evaluator.top_k(_table_scores, jnp.asarray(table))
    assert not np.isin(top[:5], np.arange(10)).any()
    # the user without train items: padding (sentinel id num_items) must not mask item 0..9
    assert set(top[5, :10]) == set(range(10))
    metrics = evaluator.evaluate(_table_scores, jnp.asarray(table), round_to=None)
    assert metrics["recall@20"] == pytest.approx(1 / 6)  # only user 5 can hit its target, item 0


def test_masked_top_k_hits_ignores_out_of_range_padding():
    scores = jnp.array([[3.0, 2.0, 1.0, 0.0]])
    top, hits = masked_top_k_hits(scores, jnp.array([[1, 4, 4]]), jnp.array([[2, 4]]), 2)
    np.testing.assert_array_equal(top, [[0, 2]])
    np.testing.assert_array_equal(hits, [[False, True]])


def test_new_parameters_do_not_recompile():
    traces = []

    def scores_fn(params, user_ids):
        traces.append(1)  # runs only while tracing
        return params["u"][user_ids] @ params["i"].T

    rng = np.random.default_rng(3)
    train = np.array([(u, u % 7) for u in range(21)], np.int64)
    targets = np.array([(u, (u + 3) % 12) for u in range(21)], np.int64)
    evaluator = RankingEvaluator(12, train, targets, topk=(1, 5), user_block=8)  # 3 blocks
    for _ in range(3):
        params = {
            "u": jnp.asarray(rng.normal(size=(21, 4)), jnp.float32),
            "i": jnp.asarray(rng.normal(size=(12, 4)), jnp.float32),
        }
        evaluator.evaluate(scores_fn, params)
        evaluator.top_k(scores_fn, params)
    assert len(traces) == 1
    assert evaluator._block_fn(scores_fn)._cache_size() == 1


def test_split_evaluators_rank_every_split_as_its_own_evaluator_in_one_program():
    """Valid and test in one compiled program give each split's own metrics, to the bit."""
    traces = []

    def scores_fn(params, user_ids):
        traces.append(1)  # runs only while tracing
        item_side = jnp.tanh(params["i"] @ params["w"])  # state-only: shared by the splits
        return params["u"][user_ids] @ item_side.T

    rng = np.random.default_rng(11)
    num_users, num_items = 37, 40
    train = np.array([(u, int(i)) for u in range(num_users) for i in rng.choice(num_items, 3, replace=False)], np.int64)
    # Splits of different shapes: 37 valid users with 1-2 items, 30 test users with up to 9.
    valid = np.array([(u, int(i)) for u in range(num_users) for i in rng.choice(num_items, 1 + u % 2, replace=False)], np.int64)
    test = np.array([(u, int(i)) for u in range(30) for i in rng.choice(num_items, 1 + u % 9, replace=False)], np.int64)
    separate = [RankingEvaluator(num_items, train, t, topk=(1, 5, 20), user_block=16) for t in (valid, test)]
    joint = SplitEvaluators(*[RankingEvaluator(num_items, train, t, topk=(1, 5, 20), user_block=16) for t in (valid, test)])
    for _ in range(2):
        params = {
            "u": jnp.asarray(rng.normal(size=(num_users, 6)), jnp.float32),
            "i": jnp.asarray(rng.normal(size=(num_items, 6)), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32),
        }
        traces.clear()
        expected = tuple(e.evaluate(scores_fn, params, round_to=None) for e in separate)
        got = joint.evaluate(scores_fn, params, round_to=None)
        assert got == expected  # same hits, same float64 sums: equal, not approximately
        assert got[0] != got[1]
    # The second round compiled nothing: only the separate evaluators' first round traced.
    assert traces == []
    assert joint._joint_fn(scores_fn)._cache_size() == 1
    assert SplitEvaluators(separate[0]).evaluate(scores_fn, params) == (separate[0].evaluate(scores_fn, params),)


def test_split_evaluators_refuse_nothing_and_mixed_placement():
    evaluator = RankingEvaluator(10, np.zeros((0, 2), np.int64), np.array([[0, 1]]), topk=(2,))
    with pytest.raises(ValueError, match="at least one"):
        SplitEvaluators()
    meshed = RankingEvaluator(10, np.zeros((0, 2), np.int64), np.array([[0, 1]]), topk=(2,))
    meshed._mesh = object()  # only its presence is checked
    with pytest.raises(ValueError, match="every evaluator has a mesh or none"):
        SplitEvaluators(evaluator, meshed)


def test_wrong_score_shape_is_a_clear_error():
    evaluator = RankingEvaluator(10, np.zeros((0, 2), np.int64), np.array([[0, 1]]), topk=(2,))
    with pytest.raises(ValueError, match="expected \\(user_block, num_items\\)"):
        evaluator.evaluate(lambda p, u: jnp.zeros((u.shape[0], 9)), None)


def test_bad_evaluator_inputs():
    targets = np.array([[0, 1]])
    with pytest.raises(ValueError, match="largest cutoff 50"):
        RankingEvaluator(10, np.zeros((0, 2), np.int64), targets)
    with pytest.raises(ValueError, match="targets is empty"):
        RankingEvaluator(100, np.array([[0, 1]]), np.zeros((0, 2), np.int64))
    with pytest.raises(ValueError, match="item ids in"):
        RankingEvaluator(100, np.array([[0, 100]]), targets)
    with pytest.raises(ValueError, match=r"\(E, 2\)"):
        RankingEvaluator(100, np.array([0, 1, 2]), targets)


# --------------------------------------------------------------------------------------
# early stopping


def test_early_stopping_strict_improvement_and_patience():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.0, 0)  # beats the initial -1
    assert stopper.update(0.1, 1)
    assert not stopper.update(0.1, 2)  # equal is not an improvement
    assert not stopper.update(0.10004, 3)  # rounds to 0.1: equal on the rounded values
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (0.1, 1, 2)
    assert not stopper.should_stop  # 2 bad epochs = patience: keep going
    assert not stopper.update(0.05, 4)
    assert stopper.should_stop  # the (patience + 1)-th bad epoch stops


def test_early_stopping_reference_defaults_and_reset():
    stopper = EarlyStopping()
    assert (stopper.metric, stopper.patience) == ("recall@5", 20)
    stopper.update(0.2, 0)
    for epoch in range(1, 21):
        stopper.update(0.1, epoch)
    assert not stopper.should_stop
    assert stopper.update(0.2001, 21)  # improvement resets the counter
    assert stopper.bad_epochs == 0
    for epoch in range(22, 43):
        stopper.update(0.2001, epoch)
    assert stopper.should_stop and stopper.bad_epochs == 21


def test_early_stopping_checkpoint_round_trip():
    stopper = EarlyStopping(patience=5)
    stopper.update(0.3, 4)
    stopper.update(0.2, 5)
    restored = EarlyStopping.from_dict(stopper.to_dict())
    assert restored == stopper
    with pytest.raises(ValueError, match="unknown EarlyStopping keys"):
        EarlyStopping.from_dict({"metric": "recall@5", "patiense": 3})
