"""Robustness tooling: trained states evaluate as in the trainer, retention curves, the comparison and its CLI
(MG arms, and training methods under the extreme shifts of issue 28)."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from mirrorgrad_jax.analysis import comparison
from mirrorgrad_jax.analysis import shifts as shift_study
from mirrorgrad_jax.cli import main
from mirrorgrad_jax.cli import robustness as robustness_cli
from mirrorgrad_jax.analysis.comparison import compare_runs, load_trained_state, train_and_measure
from mirrorgrad_jax.data import load_dataset
from mirrorgrad_jax.models import BPRMF, VBPR, BPRMFConfig, VBPRConfig
from mirrorgrad_jax.analysis.perturb import PERTURBATIONS
from mirrorgrad_jax.analysis.plots import plot_robustness
from mirrorgrad_jax.analysis.robustness import SHIFT_PRESETS, evaluate_params, robustness_curve, summarise
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig

CONFIG = VBPRConfig(embedding_size=8)
TRAIN = TrainConfig(epochs=2, batch_size=128, learning_rate=1e-2, valid_metric="recall@20", patience=5, seed=5)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("synthetic-small")  # what the CLI test asks for, so the trained params fit it


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return train_and_measure(VBPR, CONFIG, dataset, TRAIN, MGConfig(enabled=False), checkpoint_dir=folder)


def _png(path) -> bool:
    data = open(path, "rb").read()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024


def test_evaluate_params_reproduces_the_trainers_test_metrics_exactly(dataset, trained):
    assert trained.checkpoint is not None and trained.checkpoint.endswith("best.ckpt")
    reloaded = load_trained_state(VBPR, CONFIG, dataset, trained.checkpoint)
    for a, b in zip(jax.tree.leaves(reloaded), jax.tree.leaves(trained.state)):
        assert np.array_equal(a, b)
    metrics = evaluate_params(VBPR, CONFIG, dataset, reloaded, "test", TRAIN.topk, eval_batch_size=TRAIN.eval_batch_size)
    # Same parameters, same constants, same rounding: bit-identical to the trainer's numbers.
    assert metrics == trained.result.test_at_best
    valid = evaluate_params(VBPR, CONFIG, dataset, reloaded, "valid", TRAIN.topk)
    assert valid == trained.result.best_valid


def test_params_that_do_not_fit_are_refused_clearly(dataset, trained, tmp_path):
    wrong = jax.tree.map(lambda x: x[:-1] if x.ndim == 2 else x, trained.state)
    with pytest.raises(ValueError, match=r"mismatch in the trained state of VBPR .* has shape"):
        evaluate_params(VBPR, CONFIG, dataset, wrong)
    with pytest.raises(ValueError, match="holds a 'vbpr' model, not 'bprmf'"):
        load_trained_state(BPRMF, BPRMFConfig(embedding_size=8), dataset, trained.checkpoint)
    with pytest.raises(ValueError, match="does not fit VBPR"):
        load_trained_state(VBPR, VBPRConfig(embedding_size=4), dataset, trained.checkpoint)


def test_level_zero_keeps_every_metric_exactly(dataset, trained):
    for kind in PERTURBATIONS:
        rows = robustness_curve(VBPR, CONFIG, dataset, trained.state, kind, [0.0], seeds=[0, 1], modality="image")
        assert [r["seed"] for r in rows] == [0, 1]
        for row in rows:
            assert row["retention"] == {"recall@20": 1.0, "ndcg@20": 1.0}, (kind, row)
            assert row["metrics"] == row["clean"]


def test_strong_noise_changes_the_ranking_and_summarise_averages_seeds(dataset, trained):
    rows = robustness_curve(VBPR, CONFIG, dataset, trained.state, "noise", [0.5, 8.0], seeds=[0, 1, 2], metrics=("recall@10",))
    assert len(rows) == 6 and all(set(r["retention"]) == {"recall@10"} for r in rows)
    # Noise 8x the feature spread scrambles the feature half of every item vector.
    assert any(r["retention"]["recall@10"] != 1.0 for r in rows if r["level"] == 8.0)
    summary = summarise(rows)
    assert [(s["kind"], s["level"], s["metric"], s["n"]) for s in summary] == [("noise", 0.5, "recall@10", 3), ("noise", 8.0, "recall@10", 3)]
    values = [r["retention"]["recall@10"] for r in rows if r["level"] == 8.0]
    np.testing.assert_allclose(summary[1]["mean"], np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(summary[1]["std"], np.std(values, ddof=1), rtol=1e-12)


def test_summarise_and_plot_robustness(tmp_path):
    rows = [
        {"kind": k, "level": lv, "seed": s, "retention": {"recall@20": r}}
        for k, lv, s, r in [("noise", 1.0, 0, 0.8), ("noise", 1.0, 1, 0.6), ("campaign", 2.0, 0, 0.9)]
    ]
    summary = summarise(rows)
    assert summary[0] == {"kind": "campaign", "level": 2.0, "metric": "recall@20", "mean": 0.9, "std": 0.0, "n": 1}
    np.testing.assert_allclose([summary[1]["mean"], summary[1]["std"]], [0.7, np.sqrt(0.02)], rtol=1e-12)
    path = plot_robustness({"no MG": summary, "MG": summary}, tmp_path / "r.png")
    assert _png(path)
    with pytest.raises(ValueError, match="no summary rows for metric 'ndcg@20'"):
        plot_robustness({"no MG": summary}, tmp_path / "n.png", metric="ndcg@20")


def test_compare_runs_builds_one_table_and_one_figure(dataset, trained, tmp_path):
    report = compare_runs(
        VBPR, CONFIG, dataset, {"A": trained.state, "B": [trained.state, trained.state]},
        path=tmp_path / "cmp.png", levels=(0.0, 1.0), power_iterations=5, num_directions=2, flatness_batches=1, batch_size=128,
    )  # fmt: skip
    lines = report.table.splitlines()
    assert lines[0].startswith("| run | n | recall@20 | ndcg@20 | lambda_max | sharpness SAM (rho=0.05) | sharpness random (rho=0.05) | noise 0 | noise 1 | campaign 0 | campaign 1 |")
    assert lines[2].startswith("| A | 1 | ") and lines[3].startswith("| B | 2 | ")
    assert report.numbers["A"]["noise 0"] == [1.0] and report.numbers["B"]["campaign 0"] == [1.0, 1.0]
    # The same parameters twice: identical numbers, std 0.
    assert report.numbers["B"]["lambda_max"][0] == report.numbers["B"]["lambda_max"][1] == report.numbers["A"]["lambda_max"][0]
    assert np.isfinite(report.numbers["A"]["lambda_max"][0]) and report.numbers["A"]["sharpness SAM (rho=0.05)"][0] > 0
    assert _png(report.figure) and set(report.slices) == {"A", "B"}
    json.dumps(report.to_dict())


def _parser():
    parser = argparse.ArgumentParser(prog="mirrorgrad")
    sub = parser.add_subparsers(dest="command", required=True)
    robustness_cli.register(sub)
    return parser


def test_cli_defaults_are_small_and_the_robustness_command_runs(tmp_path, capsys, monkeypatch, trained):
    parser = _parser()
    defaults = parser.parse_args(["flatness"])
    assert (defaults.model, defaults.dataset, defaults.arms, defaults.epochs, defaults.patience) == ("vbpr", "synthetic", ["none", "gradient", "update"], 30, 5)
    assert parser.parse_args(["robustness"]).out_dir == "runs/robustness" and defaults.out_dir == "runs/flatness"
    with pytest.raises(ConfigError, match="unknown arm"):
        bad = parser.parse_args(["robustness", "--arms", "none,mirror", "--dataset", "synthetic-small"])
        bad.func(bad)
    with pytest.raises(ConfigError, match="has no modality \\['audio'\\]; available: image, text"):
        bad = parser.parse_args(["robustness", "--modality", "audio", "--dataset", "synthetic-small", "--quiet"])
        bad.func(bad)
    # Training itself is covered by the `trained` fixture (the real train_and_measure);
    # here the command's plumbing is checked with those parameters standing in for every arm.
    calls = []

    def fake_train(model_cls, model_config, dataset, train_config, mg, **kwargs):
        calls.append((model_config, train_config, mg))
        return trained

    monkeypatch.setattr(comparison, "train_and_measure", fake_train)
    args = parser.parse_args([
        "robustness", "--dataset", "synthetic-small", "--arms", "none,update", "--optimizer", "sgd", "--epochs", "3",
        "--alpha2", "0.3", "--set", "embedding_size=8", "--kinds", "campaign", "--levels", "0,1", "--out-dir", str(tmp_path), "--quiet",
    ])  # fmt: skip
    assert args.func(args) == 0
    assert [(c[2].enabled, c[2].apply_to, c[2].alpha2) for c in calls] == [(False, "gradient", 0.3), (True, "update", 0.3)]
    assert all(c[0] == CONFIG and c[1].optimizer == "sgd" and c[1].epochs == 3 and c[1].learning_rate == robustness_cli.DEFAULT_LR["sgd"] for c in calls)
    out = capsys.readouterr().out
    assert "| no MG | 1 |" in out and "| MG update | 1 |" in out and "campaign 1" in out
    assert _png(tmp_path / "robustness.png") and (tmp_path / "robustness.md").read_text().count("| MG update | 1 |") == 1
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["numbers"]["no MG"]["campaign 0"] == [1.0] and len(report["train"]["MG update"]) == 1


# ---------------------------------------------------------------------------------------
# Training methods side by side, and shifts to the extreme (issue 28).
# ---------------------------------------------------------------------------------------


def test_robustness_command_trains_each_method_and_measures_extreme_shifts(tmp_path, capsys):
    """The real thing, tiny: two methods trained for one epoch, then three kinds of shift.
    (lambda_max per method is checked with stand-in training below, which keeps this test short.)"""
    out_dir = tmp_path / "rob"
    status = main([
        "robustness", "--dataset", "synthetic-small", "--methods", "plain,sam", "--sam-rho", "0.1", "--epochs", "1",
        "--batch-size", "512", "--set", "embedding_size=8", "--levels", "noise=0,8", "--levels", "missing-mean,shuffle=1",
        "--modality", "missing-mean,shuffle=image", "--out-dir", str(out_dir),
    ])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    # The trainer's own account of what each run trained with.
    assert "MG off" in out and "SAM (rho=0.1)" in out
    assert "| plain | 1 |" in out and "| SAM | 1 |" in out
    report = json.loads((out_dir / "robustness.json").read_text())
    assert report["methods"]["SAM"]["method"]["name"] == "sam" and report["methods"]["SAM"]["method"]["rho"] == 0.1
    assert report["methods"]["plain"]["method"]["name"] == "none" and report["methods"]["plain"]["mg"]["enabled"] is False
    assert [(s["kind"], s["levels"], s["modality"]) for s in report["shifts"]] == [
        ("noise", [0.0, 8.0], None), ("missing-mean", [1.0], ["image"]), ("shuffle", [1.0], ["image"]),
    ]  # fmt: skip
    # The paired table: SAM minus plain per run (one run here: no spread), level 0 exactly 0.
    table = (out_dir / "robustness.md").read_text()
    assert "Paired by run" in table and "| SAM - plain | " in table, table
    paired_row = next(line for line in table.splitlines() if line.startswith("| SAM - plain |"))
    header = next(line for line in table.splitlines() if line.startswith("| run | recall@20 |") and "sharpness" not in line)
    cell = dict(zip(_cells(header), _cells(paired_row)))
    assert cell["noise 0"] == "+0.0000 (0/1)", cell
    for label in ("plain", "SAM"):
        numbers = report["numbers"][label]
        assert numbers["noise 0"] == [1.0]  # level 0: the clean ranking, exactly
        assert all(np.isfinite(numbers[c][0]) for c in ("noise 8", "missing-mean 1", "shuffle 1"))
        assert {c["kind"] for c in report["curves"][label]} == {"noise", "missing-mean", "shuffle"}
        assert len(report["train"][label]) == 1
    assert _png(out_dir / "robustness.png")


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _fake_trainers(monkeypatch, trained, calls):
    """Training stands in: every label gets the `trained` fixture's state; the settings are recorded."""

    def fake_methods(model_cls, model_config, dataset, train_configs, methods, **kwargs):
        calls.append(dict(methods))
        return {label: [trained.state] * len(train_configs) for label in methods}, {label: [trained.result] * len(train_configs) for label in methods}

    def no_arms(*args, **kwargs):
        raise AssertionError("MG arms trained although --methods was given")

    monkeypatch.setattr(shift_study, "train_methods", fake_methods)
    monkeypatch.setattr(comparison, "train_arms", no_arms)


def test_every_method_gets_its_knobs_and_the_extreme_ladder_is_one_option(tmp_path, monkeypatch, trained):
    calls = []
    _fake_trainers(monkeypatch, trained, calls)
    out_dir = tmp_path / "rob"
    status = main([
        "robustness", "--dataset", "synthetic-small", "--methods", "plain,mg,sam,asam,gnp", "--alpha2", "0.3",
        "--sam-rho", "0.1", "--asam-rho", "1.0", "--asam-eta", "0.02", "--gnp-alpha", "0.8", "--gnp-radius", "0.07",
        "--set", "embedding_size=8",
        "--shifts", "extreme", "--levels", "noise=0,8", "--modality", "shuffle=image", "--out-dir", str(out_dir), "--quiet",
    ])  # fmt: skip
    assert status == 0
    (methods,) = calls
    assert list(methods) == ["plain", "MG", "SAM", "ASAM", "GNP"]
    defaults = MethodConfig()
    expected = {
        "plain": (False, "none", {}),
        "MG": (True, "none", {}),
        "SAM": (False, "sam", {"rho": 0.1}),
        "ASAM": (False, "asam", {"rho": 1.0, "eta": 0.02}),
        "GNP": (False, "gnp", {"alpha": 0.8, "radius": 0.07}),
    }
    for label, (mg_on, name, knobs) in expected.items():
        mg, method = methods[label]
        assert (mg.enabled, method.name) == (mg_on, name)
        for field in ("rho", "eta", "alpha", "radius"):  # a knob a method does not read stays at its default
            assert getattr(method, field) == knobs.get(field, getattr(defaults, field)), (label, field)
    assert (methods["MG"][0].alpha1, methods["MG"][0].alpha2, methods["MG"][0].beta, methods["MG"][0].apply_to) == (1.0, 0.3, 3, "gradient")
    report = json.loads((out_dir / "robustness.json").read_text())
    # The extreme ladder of the issue: noise up to 8 (overridden here), a campaign on 20/50/100 % of
    # the items, a modality replaced by zeros, by its mean, by other items' rows.
    assert [(s["kind"], s["levels"], s["modality"]) for s in report["shifts"]] == [
        ("noise", [0.0, 8.0], None), ("campaign-items", [0.2, 0.5, 1.0], None), ("missing", [0.2, 0.5, 1.0], None),
        ("missing-mean", [0.2, 0.5, 1.0], None), ("shuffle", [0.2, 0.5, 1.0], ["image"]),
    ]  # fmt: skip
    table = (out_dir / "robustness.md").read_text()
    assert "methods: MG alpha1=1 alpha2=0.3 beta=3; SAM rho=0.1; ASAM rho=1 eta=0.02; GNP alpha=0.8 radius=0.07," in table
    assert "- shuffle (image): level = " in table
    # One state stands in for all five: their retention columns agree, and level 0 is exact.
    numbers = report["numbers"]
    assert all(numbers[label]["shuffle 1"] == numbers["plain"]["shuffle 1"] for label in methods)
    assert all(numbers[label]["noise 0"] == [1.0] for label in methods)
    assert _png(out_dir / "robustness.png")


def test_flatness_command_takes_methods_and_the_old_rho_still_names_the_sharpness_radius(tmp_path, monkeypatch, trained):
    calls = []
    _fake_trainers(monkeypatch, trained, calls)
    status = main([
        "flatness", "--dataset", "synthetic-small", "--methods", "plain,gnp", "--set", "embedding_size=8", "--rho", "0.1",
        "--iterations", "2", "--directions", "1", "--flatness-batches", "1", "--robustness", "--kinds", "missing",
        "--levels", "1", "--out-dir", str(tmp_path), "--quiet",
    ])  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "flatness.json").read_text())
    assert report["sharpness_rho"] == 0.1 and "sharpness SAM (rho=0.1)" in report["numbers"]["GNP"]
    (lambda_plain,), (lambda_gnp,) = report["numbers"]["plain"]["lambda_max"], report["numbers"]["GNP"]["lambda_max"]
    assert np.isfinite(lambda_plain) and lambda_plain > 0 and lambda_gnp == lambda_plain  # the same state twice
    assert "| GNP | 1 |" in (tmp_path / "flatness.md").read_text()
    assert [(s["kind"], s["levels"]) for s in report["shifts"]] == [("missing", [1.0])]
    assert _png(tmp_path / "flatness.png")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "plain,adam"], "--methods: unknown method(s) ['adam']; allowed: plain, mg, sam, asam, gnp"),
        (["--methods", "sam,sam"], "--methods lists a method twice"),
        (["--arms", "none", "--methods", "sam"], "--arms and --methods both choose what is trained"),
        (["--methods", "asam", "--rho", "0.1"], "give SAM's and ASAM's ascent radii as --sam-rho and --asam-rho"),
        (["--methods", "plain,mg", "--sam-rho", "0.1"], "--sam-rho is a knob of sam, and --methods has no sam"),
        (["--methods", "sam", "--asam-rho", "1"], "--asam-rho is a knob of asam, and --methods has no asam"),
        (["--sam-rho", "0.1"], "--sam-rho is a knob of a training method: give --methods"),
        (["--methods", "gnp", "--gnp-alpha", "2"], "MethodConfig.alpha must be a finite number in [0, 1], got 2.0"),
        (["--sharpness-rho", "0.1", "--rho", "0.2"], "are one setting"),
        # An option of a measurement the run does not make would be ignored: refused instead.
        (["--directions", "3"], "--directions sets a measurement this run does not make: add --flatness"),
        (["--sharpness-rho", "0.1"], "--sharpness-rho sets a measurement this run does not make: add --flatness"),
        (["--rho", "0.1"], "old name of the sharpness radius (--sharpness-rho), which this run does not measure (add --flatness)"),
        (["--arms", "none,none"], "--arms lists an arm twice: none,none"),
        (["--kinds", "noise,noise"], "--kinds lists a perturbation twice: noise,noise"),
        (["--set", "reg_weight=0.1,0.2"], "--set reg_weight: one value here (a comma list is a grid"),
        (["--methods", "plain,sam", "--sam-rho", "-1"], "--sam-rho: MethodConfig.rho must be a finite number > 0"),
        (["--methods", "asam", "--asam-eta", "-1"], "--asam-eta: MethodConfig.eta must be"),
        (["--levels", "noise=-1"], "noise level must be a finite number >= 0, got -1"),
        (["--levels", "shuffle=0.5,1.5"], "shuffle level is a fraction of items and must be in [0, 1], got 1.5"),
        (["--levels", "0.5,1,2", "--kinds", "swap"], "swap level is a fraction of items and must be in [0, 1], got 2"),
        (["--levels", "noise=big"], "--levels: noise level 'big' is not a number"),
        (["--levels", "blur=1"], "unknown perturbation 'blur'"),
        (["--levels", "noise="], "--levels expects VALUES or KIND=VALUES"),
        (["--levels", "1", "--levels", "2"], "a list for every kind was already given"),
        (["--kinds", "noise", "--levels", "shuffle=1"], "--levels names shuffle, which --kinds noise leaves out"),
        (["--shifts", "wild"], "--shifts: unknown preset 'wild'; allowed: default, extreme"),
        (["--modality", "shuffle=audio", "--kinds", "shuffle"], "has no modality ['audio']; available: image, text"),
        (["--levels", "shuffle=0.01"], "shuffle level 0.01 affects exactly one of 120 items"),
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--perturb-seeds", "0"], "--perturb-seeds must be at least 1, got 0"),
    ],
)
def test_a_wrong_method_or_level_is_one_line_exit_2_and_nothing_is_written(argv, message, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although an option was wrong")

    monkeypatch.setattr(shift_study, "train_methods", no_training)
    monkeypatch.setattr(comparison, "train_arms", no_training)
    out_dir = tmp_path / "never"
    assert main(["robustness", "--dataset", "synthetic-small", "--quiet", "--out-dir", str(out_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mirrorgrad robustness: error: "), err
    assert message in err, err
    assert not out_dir.exists()


def test_the_help_names_every_kind_and_preset():
    assert robustness_cli.KINDS_HELP == ", ".join(PERTURBATIONS)
    assert robustness_cli.PRESETS_HELP == ", ".join(SHIFT_PRESETS)


# ---------------------------------------------------------------------------------------
# Fine-tuned feature tables: kept as trained, or shifted with the features.
# ---------------------------------------------------------------------------------------


def _init_state(model_cls, config, dataset, seed=3):
    from flax import nnx

    from mirrorgrad_jax.train.trained import trained_state

    return trained_state(model_cls(dataset, config, rngs=nnx.Rngs(params=seed)))


def test_shifted_feature_tables_are_the_trained_tables_plus_the_shift(dataset):
    """LATTICE fine-tunes its raw feature tables and ranks through a graph learned from them.
    At initialisation the 'trained' tables are the clean features, so adding the shift must
    rank exactly as the model built on the shifted features does (exact: the same arrays)."""
    import warnings

    from mirrorgrad_jax.analysis.perturb import apply_perturbation
    from mirrorgrad_jax.analysis.robustness import StateEvaluator, ShiftNotReached
    from mirrorgrad_jax.models.lattice import LATTICE, LATTICEConfig

    config = LATTICEConfig(embedding_size=8, feat_embed_dim=8, knn_k=3)
    shifted = apply_perturbation(dataset, "noise", 2.0, seed=0)
    clean_state, shifted_state = _init_state(LATTICE, config, dataset), _init_state(LATTICE, config, shifted)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShiftNotReached)  # it reaches LATTICE either way
        kept = StateEvaluator(LATTICE, config, dataset, "test", (20,), seed=3).evaluate(clean_state, shifted, round_to=None)
        moved = StateEvaluator(LATTICE, config, dataset, "test", (20,), seed=3, feature_tables="shifted").evaluate(clean_state, shifted, round_to=None)
    built_on_shifted = StateEvaluator(LATTICE, config, dataset, "test", (20,), seed=3).evaluate(shifted_state, shifted, round_to=None)
    assert moved == built_on_shifted
    assert kept != moved  # keeping the trained tables is another measurement
    # A model without fine-tuned tables (VBPR reads its features as constants) ranks the same either way.
    state = _init_state(VBPR, CONFIG, dataset)
    assert evaluate_params(VBPR, CONFIG, shifted, state) == evaluate_params(VBPR, CONFIG, shifted, state, feature_tables="shifted")
    with pytest.raises(ValueError, match="feature_tables must be one of"):
        StateEvaluator(VBPR, CONFIG, dataset, "test", (20,), feature_tables="frozen")


def test_a_shift_that_reaches_no_score_is_named_in_a_note_not_reported_silently(dataset, tmp_path, capsys):
    """BM3 ranks with its id embeddings alone: no shift of its features changes a score, so
    its retention is 1 by construction. The command says so in one note (and the library warns)."""
    from mirrorgrad_jax.analysis.robustness import ShiftNotReached
    from mirrorgrad_jax.models import BM3, BM3Config

    config = BM3Config(embedding_size=8)
    state = _init_state(BM3, config, dataset)
    with pytest.warns(ShiftNotReached, match=r"BM3: shifting image, text \(synthetic-small~noise2\) changes none of its scores.*ranks without them"):
        rows = robustness_curve(BM3, config, dataset, state, "noise", [2.0], seeds=[0], feature_tables="shifted")
    assert rows[0]["retention"]["recall@20"] == 1.0
    status = main([
        "robustness", "--model", "bm3", "--dataset", "synthetic-small", "--methods", "plain", "--epochs", "1", "--batch-size", "512",
        "--set", "embedding_size=8", "--kinds", "noise,campaign", "--levels", "noise=1,2", "--quiet", "--out-dir", str(tmp_path / "bm3"),
    ])  # fmt: skip
    assert status == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    # One line for every shift of the same modalities (each level named once, its seeds together).
    assert len(notes) == 1 and notes[0].startswith("note: BM3: shifting image, text changes none of its scores under "), notes
    assert "(noise1, noise2, campaign" in notes[0] and "so their retention is 1: it ranks without them" in notes[0], notes


def test_each_shift_is_checked_for_reaching_the_scores_not_only_the_first_of_its_modalities(dataset):
    """A shift too small to move FREEDOM's kNN graph reaches no score; a larger shift of the
    same modalities does. Only the small one is named (the check used to run once per set of
    modalities, so the first shift's verdict spoke for every later one)."""
    import warnings

    from mirrorgrad_jax.analysis.robustness import ShiftNotReached, StateEvaluator, perturbation_rows
    from mirrorgrad_jax.models import FREEDOM, FREEDOMConfig

    config = FREEDOMConfig(embedding_size=8, knn_k=3)
    evaluator = StateEvaluator(FREEDOM, config, dataset, "test", (20,))
    state = _init_state(FREEDOM, config, dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = perturbation_rows(evaluator, state, "noise", [1e-7, 2.0], [0], modality=None, metrics=("recall@20",))
    unreached = [w.message for w in caught if issubclass(w.category, ShiftNotReached)]
    assert [w.shift for w in unreached] == ["synthetic-small~noise1e-07"], [str(w) for w in unreached]
    assert unreached[0].modalities == ("image", "text") and "its retention is 1" in str(unreached[0])
    import pickle

    again = pickle.loads(pickle.dumps(unreached[0]))  # as a warning turned error reaches a parent process
    assert (again.shift, again.modalities, str(again)) == (unreached[0].shift, unreached[0].modalities, str(unreached[0]))
    assert rows[0]["retention"]["recall@20"] == 1.0 and rows[1]["retention"]["recall@20"] != 1.0


def test_a_table_cell_says_how_many_of_its_values_its_mean_covers():
    """A retention is NaN where the clean metric is 0; the cell's mean leaves it out and says so."""
    from mirrorgrad_jax.analysis.comparison import _cell

    assert _cell([0.5, 0.7], ".2f") == "0.60 ± 0.14"
    assert _cell([0.5, float("nan"), 0.7], ".2f") == "0.60 ± 0.14 (2 of 3)"
    assert _cell([float("nan")], ".2f") == "n/a"
    assert _cell([0.25], ".2f") == "0.25"


def test_paired_differences_average_each_runs_perturbation_seeds_then_spread_over_runs():
    """By hand: three runs; the retention column holds two perturbation seeds per run."""
    from mirrorgrad_jax.analysis.shifts import paired_differences

    numbers = {
        "plain": {"recall@20": [0.1, 0.2, 0.3], "noise 1": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]},
        "SAM": {"recall@20": [0.25, 0.25, 0.5], "noise 1": [1.25, 0.75, 1.25, 1.25, 0.75, 0.75]},
    }
    table = paired_differences(numbers, ["recall@20", "noise 1"], runs=3)
    row = table.splitlines()[2]
    # recall: differences 0.15, 0.05, 0.2 -> mean 0.1333, sample std 0.0764, three above zero.
    # noise 1: per run (0.25 - 0.25) / 2 = 0, 0.25, -0.25 -> mean 0, sample std 0.25, one above.
    assert row == "| SAM - plain | +0.1333 ± 0.0764 (3/3) | +0.0000 ± 0.2500 (1/3) |", row
    # A NaN retention (clean metric 0) is left out of its run's mean; a run with none left, out of the cell.
    nan = float("nan")
    with_nan = {"plain": {"noise 2": [1.0] * 6}, "SAM": {"noise 2": [nan, 1.5, 1.0, 1.0, nan, nan]}}
    assert paired_differences(with_nan, ["noise 2"], runs=3).splitlines()[2] == "| SAM - plain | +0.2500 ± 0.3536 (1/2) |"
    assert paired_differences({"plain": numbers["plain"]}, ["recall@20"], runs=3) == ""
    assert paired_differences(numbers, ["recall@20"], runs=3, baseline="SAM").splitlines()[2].startswith("| plain - SAM | -0.1333")
    with pytest.raises(ValueError, match="baseline 'MG' is not one of"):
        paired_differences(numbers, ["recall@20"], runs=3, baseline="MG")
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_differences({**numbers, "GNP": {"recall@20": [0.1, 0.2]}}, ["recall@20"], runs=3)
    with pytest.raises(ValueError, match="not a multiple of 4 runs"):
        paired_differences(numbers, ["noise 1"], runs=4)


@pytest.mark.parametrize("argv", [["--kinds", "noise"], ["--shifts", "extreme"], ["--perturb-seeds", "2"], ["--feature-tables", "shifted"]])
def test_flatness_refuses_a_shift_option_without_robustness(argv, tmp_path, monkeypatch, capsys):
    """Without --robustness the flatness command measures no shift, so these options would be ignored."""
    monkeypatch.setattr(shift_study, "train_methods", lambda *a, **k: pytest.fail("trained although an option was wrong"))
    monkeypatch.setattr(comparison, "train_arms", lambda *a, **k: pytest.fail("trained although an option was wrong"))
    out_dir = tmp_path / "never"
    assert main(["flatness", "--dataset", "synthetic-small", "--quiet", "--out-dir", str(out_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mirrorgrad flatness: error: {argv[0]} sets a measurement this run does not make: add --robustness", err
    assert not out_dir.exists()


def test_the_flatness_loss_is_measured_on_batches_of_the_training_batch_size(tmp_path, monkeypatch, trained):
    """--batch-size sets the rows of the fixed batches the flatness loss averages (it was 2048 whatever the run trained with)."""
    _fake_trainers(monkeypatch, trained, [])
    seen = {}

    class Stop(Exception):
        pass

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(shift_study, "compare_shifts", record)
    with pytest.raises(Stop):
        main(["flatness", "--dataset", "synthetic-small", "--methods", "plain", "--batch-size", "96", "--flatness-batches", "2", "--quiet", "--out-dir", str(tmp_path / "f")])
    assert (seen["batch_size"], seen["flatness_batches"], seen["num_directions"], seen["power_iterations"]) == (96, 2, 10, 20)


def test_a_run_with_no_mg_arm_does_not_title_itself_with_mg_settings(tmp_path, monkeypatch, trained):
    def fake_arms(model_cls, model_config, dataset, configs, arms, **kwargs):
        return {label: [trained.state] * len(configs) for label in arms}, {label: [trained.result] * len(configs) for label in arms}

    monkeypatch.setattr(comparison, "train_arms", fake_arms)
    out_dir = tmp_path / "r"
    argv = ["robustness", "--dataset", "synthetic-small", "--alpha2", "0.5", "--kinds", "noise", "--levels", "1", "--set", "embedding_size=8", "--quiet"]
    assert main([*argv, "--arms", "none", "--out-dir", str(out_dir)]) == 0
    title = (out_dir / "robustness.md").read_text().splitlines()[0]
    assert "MG off" in title and "alpha2" not in title, title
    assert main([*argv, "--arms", "none,gradient", "--out-dir", str(tmp_path / "r2")]) == 0
    assert "MG alpha1=1 alpha2=0.5 beta=3" in (tmp_path / "r2" / "robustness.md").read_text().splitlines()[0]


def test_robustness_measures_flatness_too_and_takes_feature_tables_from_the_command_line(tmp_path, monkeypatch, trained):
    """robustness --flatness adds lambda_max and sharpness; --feature-tables shifted is named in the title,
    and on VBPR (its features are constants, no fine-tuned table) ranks as 'trained' does."""
    _fake_trainers(monkeypatch, trained, [])
    argv = ["robustness", "--dataset", "synthetic-small", "--methods", "plain", "--set", "embedding_size=8", "--kinds", "noise",
            "--levels", "1", "--flatness", "--iterations", "2", "--directions", "1", "--flatness-batches", "1", "--quiet"]  # fmt: skip
    reports = {}
    for tables in ("trained", "shifted"):
        out_dir = tmp_path / tables
        assert main([*argv, "--feature-tables", tables, "--out-dir", str(out_dir)]) == 0
        reports[tables] = json.loads((out_dir / "robustness.json").read_text())
        title = (out_dir / "robustness.md").read_text().splitlines()[0]
        assert ("shifts added to the fine-tuned feature tables" in title) == (tables == "shifted"), title
    numbers = reports["shifted"]["numbers"]["plain"]
    assert np.isfinite(numbers["lambda_max"][0]) and numbers["lambda_max"][0] > 0
    assert numbers["noise 1"] == reports["trained"]["numbers"]["plain"]["noise 1"]
