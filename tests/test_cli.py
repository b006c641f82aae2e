"""The command line as a user runs it: train with grids and seeds, results JSON, evaluate, errors."""

from __future__ import annotations

import json

import pytest

from mirrorgrad_jax.cli import main


def test_train_grid_writes_results_and_selects_on_valid(tmp_path, capsys):
    results = tmp_path / "r.json"
    code = main([
        "train", "--model", "bprmf", "--dataset", "synthetic-small", "--no-mg", "--epochs", "2",
        "--batch-size", "256", "--valid-metric", "recall@20", "--set", "embedding_size=8",
        "--set", "reg_weight=0.001,0.1", "--seeds", "2", "--results", str(results), "--quiet",
    ])
    assert code == 0
    report = json.loads(results.read_text())
    assert report["select_on"] == "valid" and len(report["runs"]) == 2
    assert {r["model_config"]["reg_weight"] for r in report["runs"]} == {0.001, 0.1}
    assert all(len(r["seeds"]) == 2 and r["mg"]["enabled"] is False for r in report["runs"])
    scores = [r["selection_score"] for r in report["runs"]]
    assert report["best_index"] == scores.index(max(scores))
    out = capsys.readouterr().out
    assert "selected combination (on valid)" in out and "recall@20" in out


def test_select_on_test_says_so_and_mg_grid(tmp_path, capsys):
    main([
        "train", "--model", "vbpr", "--dataset", "synthetic-small", "--mg", "--alpha2", "0.1,0.3", "--epochs", "1",
        "--batch-size", "256", "--valid-metric", "recall@20", "--set", "embedding_size=8", "--select-on", "test", "--quiet",
        "--results", str(tmp_path / "r.json"),
    ])
    out = capsys.readouterr().out
    assert "selected on the TEST split" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["mg"]["alpha2"] for r in report["runs"]) == [0.1, 0.3]


def test_yaml_config_and_evaluate_checkpoint(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: bprmf\ndataset: synthetic-small\nmodel_config:\n  embedding_size: 8\n"
        "train:\n  epochs: 2\n  batch_size: 256\n  valid_metric: recall@20\nmg:\n  enabled: false\n"
    )
    assert main(["train", "--config", str(config), "--checkpoint-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "runs" / "combo0-seed999" / "best.ckpt"
    assert ckpt.exists()
    assert main(["evaluate", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "test" in out and "recall@20" in out


def test_bad_config_key_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: bprmf\ntrain:\n  learning_rat: 0.1\n")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['learning_rat'\]"):
        main(["train", "--config", str(config), "--dataset", "synthetic-small"])
    config.write_text("modle: bprmf\n")
    with pytest.raises(SystemExit, match="unknown top-level key"):
        main(["train", "--config", str(config)])


def test_unknown_dataset_and_model(capsys):
    with pytest.raises(SystemExit, match="unknown dataset 'nowhere'"):
        main(["train", "--dataset", "nowhere"])
    with pytest.raises(ValueError, match="unknown model"):
        main(["train", "--model", "nope", "--dataset", "synthetic-small", "--epochs", "1"])


def test_datasets_lists_and_describes(capsys):
    assert main(["datasets"]) == 0
    assert "movielens-100k" in capsys.readouterr().out
    assert main(["datasets", "synthetic-small"]) == 0
    assert "200 users" in capsys.readouterr().out


def test_packaged_reference_config_resolves(capsys):
    # `--config vbpr` finds models/configs/vbpr.yaml; its 7x3 grid is too big to run here,
    # so only check that an unknown name is refused clearly.
    with pytest.raises(SystemExit, match="no packaged config"):
        main(["train", "--config", "not-a-model"])


def test_evaluate_on_mismatched_dataset_is_refused(tmp_path, capsys):
    main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--no-mg", "--epochs", "1", "--batch-size", "256",
          "--valid-metric", "recall@20", "--set", "embedding_size=8", "--checkpoint-dir", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit, match="was trained on synthetic-small"):
        main(["evaluate", str(tmp_path / "combo0-seed999" / "best.ckpt"), "--dataset", "synthetic"])


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("vbpr", "mmgcn", "grcn", "dualgnn", "slmrec", "bm3", "freedom", "dragon", "lightgcn", "bprmf"):
        assert f"\n{name} " in "\n" + out, name
