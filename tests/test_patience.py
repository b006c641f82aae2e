"""Replaying early stopping on a fixed-budget history selects what a live run would have."""

from __future__ import annotations

import math

import pytest
from mirrorgrad_jax.models import BPRMF, BPRMFConfig

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.analysis.patience import (
    DEFAULT_PATIENCES,
    paired_difference,
    patience_label,
    replay_early_stopping,
    sweep_patience,
)
from mirrorgrad_jax.train import MGConfig, TrainConfig, train

BUDGET = 30


def _history(valid):
    """Rows as TrainResult.history; the test value of epoch e is e (easy to check which row was taken)."""
    return [{"epoch": e, "valid": {"recall@20": v}, "test": {"recall@20": float(e)}} for e, v in enumerate(valid)]


# ---------------------------------------------------------------- the rule on hand-made histories


def test_strict_improvement_ties_and_rounding_keep_the_earlier_epoch():
    # epoch 2 ties epoch 1, epoch 3 is higher only beyond the 4th decimal: neither improves
    hist = _history([0.1, 0.3, 0.3, 0.30004, 0.2, 0.2])
    sel = replay_early_stopping(hist, "recall@20", None)
    assert sel.best_epoch == 1 and sel.test == {"recall@20": 1.0}
    assert sel.stop_epoch == 5 and sel.epochs_run == 6 and not sel.stopped_early


def test_stop_after_patience_plus_one_bad_epochs():
    hist = _history([0.1, 0.3, 0.2, 0.2, 0.2, 0.5, 0.1])
    # patience 0: epoch 2 is the first bad one, so the run stops there
    assert (replay_early_stopping(hist, "recall@20", 0).stop_epoch, replay_early_stopping(hist, "recall@20", 0).best_epoch) == (2, 1)
    # patience 2: epochs 2, 3, 4 bad -> stops after epoch 4, never sees the 0.5 of epoch 5
    sel = replay_early_stopping(hist, "recall@20", 2)
    assert (sel.best_epoch, sel.stop_epoch, sel.epochs_run, sel.stopped_early) == (1, 4, 5, True)
    # patience 3: survives to epoch 5 and takes it
    sel = replay_early_stopping(hist, "recall@20", 3)
    assert (sel.best_epoch, sel.stop_epoch, sel.stopped_early) == (5, 6, False)
    # a stop on the very last epoch is the rule's stop, not the budget's end... but it trained
    # every epoch, so it is reported as not stopped early
    sel = replay_early_stopping(_history([0.1, 0.3, 0.2, 0.2]), "recall@20", 1)
    assert (sel.stop_epoch, sel.stopped_early) == (3, False)


def test_min_epochs_delays_the_stop_and_the_count_keeps_growing():
    hist = _history([0.1, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.6, 0.2])
    assert replay_early_stopping(hist, "recall@20", 1).stop_epoch == 3
    # no stop before 6 epochs: after epoch 5 four bad epochs are counted (> 1), so it stops there
    sel = replay_early_stopping(hist, "recall@20", 1, min_epochs=6)
    assert (sel.best_epoch, sel.stop_epoch, sel.epochs_run) == (1, 5, 6)
    # an improvement before min_epochs resets the count
    sel = replay_early_stopping(hist, "recall@20", 1, min_epochs=8)
    assert (sel.best_epoch, sel.stop_epoch, sel.stopped_early) == (7, 8, False)


def test_sweep_is_monotone_in_patience_and_none_is_the_global_best():
    hist = _history([0.1, 0.3, 0.2, 0.25, 0.28, 0.29, 0.4, 0.35, 0.33, 0.5, 0.45, 0.44])
    sweep = sweep_patience(hist, "recall@20", (0, 1, 2, None))
    assert list(sweep) == [0, 1, 2, None]
    stops = [sweep[p].stop_epoch for p in (0, 1, 2, None)]
    assert stops == sorted(stops)
    assert sweep[None].best_epoch == 9 and sweep[None].stop_epoch == 11
    assert [patience_label(p) for p in DEFAULT_PATIENCES] == ["5", "10", "20", "50", "none"]


@pytest.mark.parametrize(
    "history, metric, patience, min_epochs, message",
    [
        ([], "recall@20", 5, 0, "empty"),
        (_history([0.1]), "ndcg@20", 5, 0, "no 'ndcg@20'"),
        (_history([0.1]), "recall@20", -1, 0, "patience must be >= 0"),
        (_history([0.1]), "recall@20", 2.5, 0, "patience must be a non-negative int"),
        (_history([0.1]), "recall@20", 5, -3, "min_epochs must be >= 0"),
        (_history([0.1, 0.2])[1:], "recall@20", 5, 0, "expected 0"),
        ([{"epoch": 0, "valid": {"recall@20": 0.1}}], "recall@20", 5, 0, "lacks ['test']"),
        (_history([float("nan")]), "recall@20", 5, 0, "must be a number"),
        ("not a history", "recall@20", 5, 0, "list of per-epoch dicts"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(history, metric, patience, min_epochs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        replay_early_stopping(history, metric, patience, min_epochs)


def test_sweep_refuses_empty_or_repeated_patiences():
    with pytest.raises(ValueError, match="empty"):
        sweep_patience(_history([0.1]), "recall@20", [])
    with pytest.raises(ValueError, match="repeats"):
        sweep_patience(_history([0.1]), "recall@20", [5, 5])


def test_paired_difference_pairs_by_seed():
    plain = {999: 0.30, 1000: 0.20, 1001: 0.25, 7: 0.9}
    mg = {1001: 0.26, 999: 0.32, 1000: 0.19}
    d = paired_difference(plain, mg)
    assert d.seeds == (999, 1000, 1001) and d.n == 3
    assert d.differences == pytest.approx((0.02, -0.01, 0.01))
    assert d.mean == pytest.approx(0.02 / 3)
    assert d.std == pytest.approx(math.sqrt(((0.02 - 0.02 / 3) ** 2 + (-0.01 - 0.02 / 3) ** 2 + (0.01 - 0.02 / 3) ** 2) / 2))
    assert (d.minimum, d.maximum, d.positive) == (pytest.approx(-0.01), pytest.approx(0.02), 2)
    assert paired_difference({1: 0.1}, {1: 0.3}).std == 0.0
    with pytest.raises(ValueError, match="no seed is in both"):
        paired_difference({1: 0.1}, {2: 0.1})
    with pytest.raises(ValueError, match="finite"):
        paired_difference({1: float("inf")}, {1: 0.1})


# ---------------------------------------------------------------- replay = live run


@pytest.fixture(scope="module")
def setup():
    ds = make_synthetic(num_users=200, num_items=120, seed=0)
    base = {"epochs": BUDGET, "batch_size": 256, "learning_rate": 3e-2, "valid_metric": "recall@20", "seed": 1}

    def run(**kw):
        return train(BPRMF, BPRMFConfig(embedding_size=8), ds, TrainConfig(**{**base, **kw}), MGConfig(enabled=False), log=None)

    # patience = budget: the full-budget run never stops early
    full = run(patience=BUDGET)
    assert full.epochs_run == BUDGET and full.stop_reason == "max_epochs"
    return run, full


def _assert_same(selection, live):
    assert selection.best_epoch == live.best_epoch
    assert selection.epochs_run == live.epochs_run
    assert selection.test == live.test_at_best
    assert selection.valid == live.best_valid
    assert selection.stopped_early == (live.stop_reason == "early_stopping" and live.epochs_run < BUDGET)


def test_replay_equals_live_runs_at_the_same_patience(setup):
    run, full = setup
    replays = sweep_patience(full.history, "recall@20", (1, 2, 3, None))
    early = 0
    for patience in (1, 2, 3):
        live = run(patience=patience)
        _assert_same(replays[patience], live)
        early += live.stop_reason == "early_stopping"
    # the comparison means something only if the live runs were actually cut short
    assert early >= 2, [replays[p].epochs_run for p in (1, 2, 3)]
    # no early stop: the best over the whole budget is the full run's own selection
    assert replays[None].best_epoch == full.best_epoch and replays[None].test == full.test_at_best


def test_replay_equals_a_live_run_with_min_epochs(setup):
    run, full = setup
    patience = 2
    plain = replay_early_stopping(full.history, "recall@20", patience)
    assert plain.stopped_early
    # no stop allowed until two epochs after the rule's own stop: the run stops exactly then
    # when no improvement came in between, otherwise later
    min_epochs = plain.epochs_run + 2
    replay = replay_early_stopping(full.history, "recall@20", patience, min_epochs=min_epochs)
    assert replay.epochs_run >= min_epochs
    live = run(patience=patience, min_epochs=min_epochs)
    _assert_same(replay, live)


# ---------------------------------------------------------------- the benchmark's bookkeeping (no training)


@pytest.fixture(scope="module")
def bench():
    import importlib.util
    import os
    import sys

    benchmarks = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if benchmarks not in sys.path:  # as when run as a script: the script imports benchmarks/reporting.py
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location("bench_patience_sweep", os.path.join(benchmarks, "patience_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_row(alpha2, seed, valid, test, budget=None):
    budget = budget or len(valid)
    return {
        "model": "m", "dataset": "d", "alpha2": alpha2, "seed": seed, "budget": budget, "seconds": 1.0,
        "curves": {"loss": [0.0] * len(valid), "valid": {"recall@20": valid, "ndcg@20": valid},
                   "test": {"recall@20": test, "ndcg@20": test}},
    }


def test_budgets_and_pending_runs(bench):
    budgets = bench.parse_budgets("freedom=400,vbpr:movielens-100k=300", 200)
    assert bench.budget_for(budgets, "vbpr", "movielens-100k") == 300
    assert bench.budget_for(budgets, "vbpr", "synthetic") == 200
    assert bench.budget_for(budgets, "freedom", "synthetic") == 400
    for bad in ("freedom", "freedom=x", "=3", "freedom=1"):
        with pytest.raises(ValueError, match="model=EPOCHS"):
            bench.parse_budgets(bad, 200)
    done = [{"model": "vbpr", "dataset": "synthetic", "alpha2": None, "seed": 999, "budget": 200},
            # a finished run with another budget does not count for this grid
            {"model": "vbpr", "dataset": "synthetic", "alpha2": 0.2, "seed": 999, "budget": 100}]
    todo = bench.pending_runs(done, ["vbpr", "freedom"], ["synthetic", "movielens-100k"], 2, budgets, 0.2)
    assert len(todo) == 2 * 2 * 2 * 2 - 1
    assert todo[0] == ("vbpr", "synthetic", 0.2, 999, 200)
    # dataset-major, then model: a cell is finished before the next starts
    assert [t[:2] for t in todo] == sorted([t[:2] for t in todo], key=lambda c: (["synthetic", "movielens-100k"].index(c[1]), ["vbpr", "freedom"].index(c[0])))
    assert ("freedom", "synthetic", None, 1000, 400) in todo and ("vbpr", "movielens-100k", None, 999, 300) in todo


def test_cell_table_separates_the_stopping_rule_from_the_arm(bench, tmp_path):
    flat = [0.3] * 12
    # seed 999's plain run peaks at epoch 1, dips for 7 epochs and climbs late: patience 5 kills it
    early_peak = [0.1, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4]
    rows = [
        _run_row(None, 999, early_peak, [0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4]),
        _run_row(0.2, 999, [0.1 + 0.01 * e for e in range(12)], [0.39] * 12),
        _run_row(None, 1000, flat, [0.3] * 12),
        _run_row(0.2, 1000, flat, [0.31] * 12),
    ]
    lines = bench.cell_table(rows, 0.2, patiences=(5, None))
    p5, none = lines[2], lines[3]
    # patience 5: plain seed 999 reports 0.2 at epoch 1 (stopped after 7 epochs) -> MG +0.19 there
    assert "+0.1900, +0.0100" in p5 and "+0.1000 ± 0.1273" in p5 and "2 / 2" in p5
    # plain: seed 999 stops after 8 epochs (bad 2..7), the flat seed after 7 (bad 1..6); best epochs 1 and 0
    assert "| 7.5 ± 0.7 (0.5 ± 0.7) |" in p5
    # best over the budget: plain seed 999 reaches 0.4 -> MG -0.01 there
    assert "-0.0100, +0.0100" in none and "+0.0000 ± 0.0141" in none and "1 / 2" in none
    assert none.startswith("| none (best over budget) |")
    over = bench.overview(bench.cells(rows), 0.2, patiences=(5, None))
    assert "| m | d | 12 | 2 / 2 |" in over[2] and "+0.1000 ± 0.1273 (2/2)" in over[2]
    # MG seed 999's best is its last epoch: flagged
    assert over[2].endswith("| 11 | 1 / 4 |")
    path = tmp_path / "fig.png"
    bench.plot_cell(rows, 0.2, str(path))
    assert path.stat().st_size > 10_000


def test_history_of_a_recorded_run_replays_like_its_curves(bench):
    row = _run_row(None, 999, [0.1, 0.3, 0.2, 0.2], [0.0, 1.0, 2.0, 3.0])
    hist = bench.history_of(row)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3] and hist[1]["test"] == {"recall@20": 1.0, "ndcg@20": 1.0}
    assert replay_early_stopping(hist, "recall@20", 1).test["recall@20"] == 1.0
