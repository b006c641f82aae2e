"""The command line as a user runs it: train with grids and seeds, results JSON, evaluate, errors."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.errors import ConfigError


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


def _one_line_error(capsys, code, *fragments):
    """A user mistake: exit status 2, nothing on stdout about it, ONE line on stderr, no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: bprmf\ntrain:\n  learning_rat: 0.1\n")
    code = main(["train", "--config", str(config), "--dataset", "synthetic-small"])
    _one_line_error(capsys, code, "unknown key(s) ['learning_rat']")
    config.write_text("modle: bprmf\n")
    _one_line_error(capsys, main(["train", "--config", str(config)]), "unknown top-level key")


def test_unknown_dataset_and_model_are_one_line(capsys):
    _one_line_error(capsys, main(["train", "--dataset", "nowhere"]), "unknown dataset 'nowhere'")
    _one_line_error(capsys, main(["train", "--model", "nosuch", "--dataset", "synthetic-small", "--epochs", "1"]), "unknown model 'nosuch'", "available:")


@pytest.mark.parametrize("model", ["mgcn", "mvgae", "slmrec"])
def test_a_dataset_without_the_roles_a_model_needs_is_one_line(model, tmp_path, capsys):
    from mirrorgrad_jax.data import make_synthetic, write_mmrec

    folder = tmp_path / "textonly"
    write_mmrec(make_synthetic(num_users=40, num_items=30, modalities={"text": 8}, seed=1, name="textonly"), str(folder))
    _one_line_error(capsys, main(["train", "--model", model, "--dataset", str(folder), "--epochs", "1"]), "needs both an image and a text", "['text']")


def test_a_third_modality_plays_the_image_role_with_a_warning():
    from flax import nnx

    from mirrorgrad_jax.data import make_synthetic
    from mirrorgrad_jax.models import MGCN, MGCNConfig

    # MovieLens-100K's shape: 'meta' and 'text', no 'image'.
    ds = make_synthetic(num_users=30, num_items=20, modalities={"meta": 6, "text": 8}, seed=2, name="meta-text")
    with pytest.warns(UserWarning, match="using 'meta' in the image role"):
        model = MGCN(ds, MGCNConfig(embedding_size=8), rngs=nnx.Rngs(0))
    assert model.image_emb.shape == (20, 6) and model.text_emb.shape == (20, 8)


def test_a_value_that_is_not_yaml_is_one_line(capsys):
    _one_line_error(capsys, main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--set", "embedding_size=[1"]), "cannot read '[1' as a value")


def test_malformed_inter_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("userID\titemID\tx_label\n0\t1\t0\n1\tx\t0\n")
    line = _one_line_error(capsys, main(["train", "--dataset", str(folder), "--epochs", "1"]), "bad.inter", "line 3")
    assert "itemID='x'" in line
    (folder / "bad.inter").write_bytes(b"userID\titemID\tx_label\n0\t1\t0\n1\t\xff\t0\n")
    _one_line_error(capsys, main(["train", "--dataset", str(folder), "--epochs", "1"]), "bad.inter is not UTF-8 text")


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr", "1e-4"],
        ["--lr", "1E-4"],
        ["--set", "reg_weight=1e-4"],
        ["--set", "reg_weight=.5"],
        ["--epochs", "2e0"],
    ],
)
def test_numbers_are_read_as_people_write_them(tmp_path, flags):
    results = tmp_path / "r.json"
    base = ["train", "--model", "vbpr", "--dataset", "synthetic-small", "--epochs", "2", "--batch-size", "512",
            "--valid-metric", "recall@20", "--set", "embedding_size=8", "--quiet", "--results", str(results)]  # fmt: skip
    assert main(base + flags) == 0
    run = json.loads(results.read_text())["runs"][0]
    assert isinstance(run["train"]["learning_rate"], float) and isinstance(run["model_config"]["reg_weight"], float)
    if flags[0] == "--lr":
        assert run["train"]["learning_rate"] == 1e-4
    if flags[1].startswith("reg_weight"):
        assert run["model_config"]["reg_weight"] == float(flags[1].split("=")[1])


def test_yaml_numbers_and_field_types(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: bprmf\ndataset: synthetic-small\nmodel_config:\n  embedding_size: 8\n  reg_weight: 1e-4\n"
        "train:\n  epochs: 1\n  batch_size: 512\n  learning_rate: 1e-3\n  valid_metric: recall@20\nmg:\n  enabled: false\n"
    )
    assert main(["train", "--config", str(config), "--quiet", "--results", str(tmp_path / "r.json")]) == 0
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert run["train"]["learning_rate"] == 1e-3 and run["model_config"]["reg_weight"] == 1e-4
    capsys.readouterr()
    config.write_text("model: bprmf\ntrain:\n  epochs: many\n")
    _one_line_error(capsys, main(["train", "--config", str(config), "--dataset", "synthetic-small"]), "TrainConfig.epochs must be an integer", "'many'")
    config.write_text("model: bprmf\nmodel_config:\n  reg_weight: '1e-4'\n")
    _one_line_error(capsys, main(["train", "--config", str(config), "--dataset", "synthetic-small"]), "BPRMFConfig.reg_weight must be a finite number >= 0", "'1e-4'")


def test_datasets_lists_and_describes(capsys):
    assert main(["datasets"]) == 0
    assert "movielens-100k" in capsys.readouterr().out
    assert main(["datasets", "synthetic-small"]) == 0
    assert "200 users" in capsys.readouterr().out


def test_packaged_reference_config_resolves(capsys):
    # `--config vbpr` finds models/configs/vbpr.yaml; its 7x3 grid is too big to run here,
    # so only check that an unknown name is refused clearly.
    _one_line_error(capsys, main(["train", "--config", "not-a-model"]), "no packaged config")


def test_evaluate_on_mismatched_dataset_is_refused(tmp_path, capsys):
    main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--no-mg", "--epochs", "1", "--batch-size", "256",
          "--valid-metric", "recall@20", "--set", "embedding_size=8", "--checkpoint-dir", str(tmp_path), "--quiet"])
    capsys.readouterr()
    code = main(["evaluate", str(tmp_path / "combo0-seed999" / "best.ckpt"), "--dataset", "synthetic"])
    _one_line_error(capsys, code, "was trained on synthetic-small")


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    reference_zoo = ("vbpr", "mmgcn", "grcn", "dualgnn", "slmrec", "bm3", "freedom", "dragon", "lattice", "mgcn", "layergcn",
                     "selfcfed_lgn", "mvgae", "itemknncbf")  # fmt: skip
    for name in reference_zoo + ("lightgcn", "bprmf"):
        assert f"\n{name} " in "\n" + out, name
    assert "no training" in out.split("\nitemknncbf ")[1].splitlines()[0]


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: proof that a loader ran code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_pickle(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"format": 1, "meta": _WritesMarker(marker)}))


def test_pickled_checkpoints_are_refused_without_running_them(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "runs" / "best.ckpt"
    _crafted_pickle(ckpt, marker)
    _one_line_error(capsys, main(["evaluate", str(ckpt)]), "is a file, not a mirrorgrad checkpoint", "never loaded")
    assert not marker.exists()
    run_dir = tmp_path / "resume"
    _crafted_pickle(run_dir / "combo0-seed999" / "last.ckpt", marker)
    code = main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--set", "embedding_size=8",
                 "--checkpoint-dir", str(run_dir), "--resume", "--quiet"])  # fmt: skip
    _one_line_error(capsys, code, "cannot resume", "never loaded")
    assert not marker.exists()


def test_pickled_user_graph_is_refused_without_running_it(tmp_path, capsys):
    from mirrorgrad_jax.data import make_synthetic, write_mmrec

    marker = tmp_path / "PWNED"
    folder = tmp_path / "ds"
    write_mmrec(make_synthetic(num_users=30, num_items=20, seed=1, name="ds"), folder)
    import numpy as np

    np.save(folder / "user_graph_dict.npy", np.array(_WritesMarker(marker), dtype=object), allow_pickle=True)
    _one_line_error(capsys, main(["datasets", str(folder)]), "user_graph_dict.npy")
    assert not marker.exists()


def test_cli_module_runs_as_a_program_with_exit_status_2(tmp_path):
    # The installed entry point and `python -m mirrorgrad_jax` share main(); check the exit status end to end.
    proc = subprocess.run([sys.executable, "-m", "mirrorgrad_jax", "train", "--model", "nosuch"], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown model 'nosuch'" in proc.stderr


def test_an_mg_grid_is_trained_once_when_mg_is_off_and_the_log_says_so(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: bprmf\ndataset: synthetic-small\nmodel_config:\n  embedding_size: 8\n"
        "train:\n  epochs: 1\n  batch_size: 1024\n  valid_metric: recall@20\nmg:\n  alpha2: [0.1, 0.2, 0.3]\n"
    )
    assert main(["train", "--config", str(config), "--no-mg", "--results", str(tmp_path / "r.json")]) == 0
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["mg"]["enabled"] is False
    assert "the mg grid over alpha2 [0.1, 0.2, 0.3] cannot change a run with MG off" in capsys.readouterr().out


def _small_catalogue(tmp_path, num_items=30):
    from mirrorgrad_jax.data import make_synthetic, write_mmrec

    folder = tmp_path / "small"
    write_mmrec(make_synthetic(num_users=40, num_items=num_items, seed=1, name="small"), str(folder))
    return folder


def test_a_catalogue_smaller_than_the_largest_cutoff_trains_with_the_cutoffs_it_can_rank(tmp_path, capsys):
    folder = _small_catalogue(tmp_path)
    results = tmp_path / "r.json"
    code = main(["train", "--model", "bprmf", "--dataset", str(folder), "--epochs", "1", "--batch-size", "256",
                 "--set", "embedding_size=8", "--set", "reg_weight=0.001,0.1", "--results", str(results)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    notes = [line for line in out.splitlines() if "fewer than the cut-off" in line]
    assert len(notes) == 1 and "30 items" in notes[0] and "[50]" in notes[0], out  # said once, for the whole grid
    report = json.loads(results.read_text())
    for run in report["runs"]:
        assert run["train"]["topk"] == [5, 10, 20]
        (seed,) = run["seeds"]
        assert sorted(seed["test_at_best"]) == sorted(f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 10, 20))
    assert "nan" not in out


def test_a_valid_metric_beyond_the_catalogue_is_one_line(tmp_path, capsys):
    folder = _small_catalogue(tmp_path)
    code = main(["train", "--model", "bprmf", "--dataset", str(folder), "--epochs", "1", "--valid-metric", "recall@50",
                 "--set", "embedding_size=8", "--checkpoint-dir", str(tmp_path / "runs")])  # fmt: skip
    _one_line_error(capsys, code, "30 items", "recall@50", "--valid-metric recall@20")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--model", "bprmf", "--set", "embedding_size=-1"], "BPRMFConfig.embedding_size"),
        (["--model", "bprmf", "--lr", "fast"], "TrainConfig.learning_rate"),
        (["--model", "bprmf", "--set", "no_such_option=1"], "unknown key(s) ['no_such_option']"),
        (["--model", "bprmf", "--seeds", "0"], "--seeds must be at least 1, got 0"),
    ],
)
def test_names_and_config_are_checked_before_the_dataset_is_loaded(argv, fragment, monkeypatch, capsys):
    import mirrorgrad_jax.data

    def too_early(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the model name and the config were checked")

    monkeypatch.setattr(mirrorgrad_jax.data, "load_dataset", too_early)
    _one_line_error(capsys, main(["train", *argv, "--dataset", "large-10x", "--epochs", "1"]), fragment)


# ---------------------------------------------------------------------------------------
# `mirrorgrad evaluate` finds the run's data where it was, and checks it is that data.
# ---------------------------------------------------------------------------------------

PINNED_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinned", "dualgnn-best.ckpt")


def _same_interactions_split_two_ways(tmp_path):
    """``sets/data`` and ``work/data``: the same users, items and sizes, one user's rows split otherwise (another seed)."""
    import numpy as np

    from mirrorgrad_jax.data import RecDataset, make_synthetic, write_mmrec

    ds = make_synthetic(num_users=60, num_items=60, seed=3, name="data")
    write_mmrec(ds, tmp_path / "sets" / "data")
    train, test = ds.train.copy(), ds.test.copy()
    user = int(test[0, 0])
    row = int(np.flatnonzero(train[:, 0] == user)[0])
    train[row, 1], test[0, 1] = test[0, 1], train[row, 1]
    other = RecDataset.from_arrays("data", train, ds.valid, test, dict(ds.features), verbose=False)
    assert (other.num_users, other.num_items, len(other.train), len(other.test)) == (ds.num_users, ds.num_items, len(ds.train), len(ds.test))
    write_mmrec(other, tmp_path / "work" / "data")


def _printed(out, split):
    line = next(line for line in out.splitlines() if line.startswith(f"{split} "))
    words = line.split()[1:]
    return dict(zip(words[::2], (float(v) for v in words[1::2])))


def test_evaluate_finds_a_folder_dataset_where_the_run_read_it_and_checks_it(tmp_path, monkeypatch, capsys):
    _same_interactions_split_two_ways(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", "bprmf", "--dataset", "sets/data", "--no-mg", "--epochs", "1", "--batch-size", "256",
                 "--valid-metric", "recall@20", "--set", "embedding_size=8", "--checkpoint-dir", "runs",
                 "--results", "r.json", "--quiet"])  # fmt: skip
    assert code == 0
    expected = json.loads((tmp_path / "r.json").read_text())["runs"][0]["seeds"][0]["test_at_best"]
    ckpt = str(tmp_path / "runs" / "combo0-seed999" / "best.ckpt")
    capsys.readouterr()
    # Elsewhere, beside a folder called "data" of the same sizes (the raw files prepared with another seed).
    monkeypatch.chdir(tmp_path / "work")
    assert main(["evaluate", ckpt]) == 0
    out = capsys.readouterr().out
    assert f"data: {tmp_path / 'sets' / 'data'}, the run's training data" in out, out
    assert _printed(out, "test") == {k: pytest.approx(v, abs=5e-5) for k, v in expected.items() if k.split("@")[0] in ("recall", "ndcg")}
    # Pointing --dataset at the other split is refused: same sizes, other data.
    line = _one_line_error(capsys, main(["evaluate", ckpt, "--dataset", "data"]), "was trained on data", "split arrays")
    assert str(tmp_path / "sets" / "data") in line
    # The folder moves: the checkpoint says where it was; --dataset points at the new place, still checked.
    (tmp_path / "sets").rename(tmp_path / "moved")
    _one_line_error(capsys, main(["evaluate", ckpt]), f"{tmp_path / 'sets' / 'data'}, which is not there any more", "--dataset")
    assert main(["evaluate", ckpt, "--dataset", str(tmp_path / "moved" / "data")]) == 0
    out = capsys.readouterr().out
    assert "the run's training data" in out and _printed(out, "test")["recall@20"] == pytest.approx(expected["recall@20"], abs=5e-5)


def test_evaluate_of_a_checkpoint_from_before_fingerprints_says_the_data_was_not_verified(capsys):
    assert main(["evaluate", PINNED_CHECKPOINT]) == 0
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if line.startswith("data: ")]
    assert "NOT verified" in note and "could not be verified" in note and "synthetic-small" in note


def test_evaluate_reads_a_checkpoint_without_orbax_warnings(capsys, caplog):
    # orbax logs through absl into Python logging. Reading the array metadata through a
    # Checkpointer made it warn, on every read, about a step file a composite save never
    # writes inside ``arrays/``; nothing is wrong with such a checkpoint, so nothing may say so.
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", PINNED_CHECKPOINT]) == 0
    assert "recall@20" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in warned if "CHECKPOINT_METADATA" in m or "etadata file" in m], warned


def test_resume_ignores_where_the_data_was_read_but_not_what_it_is(tmp_path, monkeypatch, capsys):
    _same_interactions_split_two_ways(tmp_path)
    argv = ["train", "--model", "bprmf", "--no-mg", "--epochs", "2", "--batch-size", "256", "--valid-metric", "recall@20",
            "--set", "embedding_size=8", "--checkpoint-dir", str(tmp_path / "runs"), "--quiet"]  # fmt: skip
    assert main([*argv, "--dataset", str(tmp_path / "sets" / "data")]) == 0
    (tmp_path / "sets").rename(tmp_path / "moved")
    assert main([*argv, "--resume", "--dataset", str(tmp_path / "moved" / "data")]) == 0  # the same data, moved
    capsys.readouterr()
    line = _one_line_error(capsys, main([*argv, "--resume", "--dataset", str(tmp_path / "work" / "data")]), "cannot resume")
    assert "it was written with other settings (dataset.splits_sha256: " in line


def test_resume_to_a_larger_epoch_cap_is_the_longer_run_and_a_changed_knob_is_named(tmp_path, capsys):
    """The epoch cap only says where a run ends: 2 epochs, then ``--epochs 4 --resume``, is the 4-epoch run.

    A knob the run reads (ASAM's radius) is not: the message names it with both values.
    """
    import json

    def run(folder, epochs, *extra):
        results = tmp_path / f"{folder}.json"
        argv = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--method", "asam", "--rho", "0.05", "--batch-size", "256",
                "--valid-metric", "recall@20", "--set", "embedding_size=8", "--patience", "10", "--quiet", "--epochs", str(epochs),
                "--checkpoint-dir", str(tmp_path / folder), "--results", str(results), *extra]  # fmt: skip
        code = main(argv)
        return code, (json.loads(results.read_text())["runs"][0]["seeds"][0] if code == 0 else None)

    _, whole = run("whole", 4)
    _, first = run("split", 2)
    code, resumed = run("split", 4, "--resume")
    assert code == 0 and [h["loss"] for h in first["history"]] == [h["loss"] for h in whole["history"][:2]]
    assert resumed["epochs_run"] == whole["epochs_run"] == 4
    assert (resumed["best_epoch"], resumed["best_valid"], resumed["test_at_best"]) == (whole["best_epoch"], whole["best_valid"], whole["test_at_best"])
    capsys.readouterr()
    code = main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--method", "asam", "--batch-size", "256",
                 "--valid-metric", "recall@20", "--set", "embedding_size=8", "--patience", "10", "--quiet", "--epochs", "4",
                 "--checkpoint-dir", str(tmp_path / "split"), "--resume"])  # fmt: skip
    _one_line_error(capsys, code, "cannot resume from", "it was written with other settings (method.rho: 0.05 there, 0.5 here)")
    # A cap below the epochs already done is not that cap's run: refused, nothing rewritten.
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "whole").rglob("*"))
    code, _ = run("whole", 2, "--resume")
    _one_line_error(capsys, code, "it has 4 epochs done, more than this run's 2 (--epochs); give --epochs 4 or more")
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "whole").rglob("*")) == before


def _bprmf_run(tmp_path, folder, *extra):
    import json

    results = tmp_path / f"{folder}.json"
    argv = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--no-mg", "--batch-size", "256", "--valid-metric", "recall@20",
            "--set", "embedding_size=8", "--patience", "10", "--checkpoint-dir", str(tmp_path / folder), "--results", str(results), *extra]  # fmt: skip
    code = main(argv)
    return code, (json.loads(results.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) if code == 0 else None)


def test_a_save_stopped_between_its_two_renames_resumes_from_the_checkpoint_it_had_written(tmp_path, capsys):
    """A checkpoint replaces the last one by two renames (last -> .prev, .next -> last). A run
    stopped between them leaves no last.ckpt but a complete last.ckpt.next: --resume goes on
    from it (it used to start again from epoch 0 and delete it), as the run that never stopped."""
    import shutil

    _, whole = _bprmf_run(tmp_path, "whole", "--epochs", "4")
    _bprmf_run(tmp_path, "cut", "--epochs", "2")
    folder = tmp_path / "cut" / "combo0-seed999"
    shutil.copytree(folder / "last.ckpt", folder / "last.ckpt.next")
    (folder / "last.ckpt").rename(folder / "last.ckpt.prev")
    capsys.readouterr()
    code, resumed = _bprmf_run(tmp_path, "cut", "--epochs", "4", "--resume")
    assert code == 0 and "resumed" in capsys.readouterr().out
    runs = [r["runs"][0]["seeds"][0] for r in (whole, resumed)]
    assert [h["loss"] for h in runs[1]["history"]] == [h["loss"] for h in runs[0]["history"]]
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_fresh_run_removes_an_earlier_runs_checkpoints_and_a_diverged_combination_is_never_selected(tmp_path, capsys):
    """Without --resume a run starts afresh: the checkpoints of an earlier run in its folder go,
    even when it saves none itself (here every combination but one diverges at once). The
    selected combination is one with a score; NaN scores are written as null (standard JSON)."""
    _bprmf_run(tmp_path, "ck", "--epochs", "1")
    folder = tmp_path / "ck" / "combo0-seed999"
    assert (folder / "best.ckpt").is_dir()
    capsys.readouterr()
    code, report = _bprmf_run(tmp_path, "ck", "--epochs", "1", "--lr", "1e30,0.05")
    assert code == 0 and "removed the checkpoints of an earlier run" in capsys.readouterr().out
    assert not (folder / "best.ckpt").exists() and not (folder / "last.ckpt").exists()  # combination 0 diverged at once
    assert report["runs"][0]["selection_score"] is None and report["runs"][0]["seeds"][0]["stop_reason"] == "nan_loss"
    assert report["best_index"] == 1 and report["runs"][1]["selection_score"] > 0


class _CountingCheckpointer:
    """Wraps orbax's checkpointer and records which items each restore reads."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def save(self, *args, **kwargs):
        return self.inner.save(*args, **kwargs)

    def restore(self, folder, args):
        restored = self.inner.restore(folder, args=args)
        for item, value in restored.items():
            self.log.append((item, sorted(value) if item == "arrays" else None))
        return restored

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


def test_evaluate_reads_the_checkpoint_once_and_never_its_optimizer_state(tmp_path, monkeypatch, capsys):
    from mirrorgrad_jax.train import checkpoint

    assert main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--batch-size", "512",
                 "--valid-metric", "recall@20", "--set", "embedding_size=8", "--checkpoint-dir", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    log = []
    real = checkpoint._checkpointer
    monkeypatch.setattr(checkpoint, "_checkpointer", lambda: _CountingCheckpointer(real(), log))
    for name in ("best.ckpt", "last.ckpt"):
        log.clear()
        assert main(["evaluate", str(tmp_path / "combo0-seed999" / name)]) == 0
        assert [item for item, _ in log] == ["meta", "arrays"], log  # each read once
        assert "opt_state" not in log[1][1], log


def test_a_checkpoint_declaring_a_huge_array_is_refused_before_anything_is_allocated(tmp_path):
    # A copy of the pinned checkpoint whose array metadata declares user preferences of
    # 2**50 x 64 float32 (256 PB): the reader must compare with the model before restoring.
    # Run as a separate process: a reader that allocates first would abort it.
    import orbax.checkpoint as ocp

    from mirrorgrad_jax.train.checkpoint import load_checkpoint

    pinned = load_checkpoint(PINNED_CHECKPOINT)
    groups = {**pinned.arrays, "checkpoint": {"format": __import__("numpy").asarray(2, "int32")}}
    crafted = tmp_path / "crafted.ckpt"
    handler = ocp.CompositeCheckpointHandler(arrays=ocp.StandardCheckpointHandler(use_ocdbt=False), meta=ocp.JsonCheckpointHandler())
    ocp.Checkpointer(handler).save(str(crafted), args=ocp.args.Composite(arrays=ocp.args.StandardSave(groups), meta=ocp.args.JsonSave(pinned.meta)))
    zarray = crafted / "arrays" / "params.gcn_image" / "pref" / "value" / ".zarray"
    header = json.loads(zarray.read_text())
    header["shape"] = [2**50, 64]
    zarray.write_text(json.dumps(header))
    proc = subprocess.run([sys.executable, "-m", "mirrorgrad_jax", "evaluate", str(crafted)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)  # fmt: skip
    err = "\n".join(line for line in proc.stderr.splitlines() if "WARNING" not in line and "absl" not in line)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "'gcn_image/pref/value' is stored as (1125899906842624, 64) float32" in err and "(200, 64)" in err, err
    assert "refused before reading any array" in err


# ---------------------------------------------------------------------------------------
# --logdir: one TensorBoard run per combination and seed; progress bars on a terminal.
# ---------------------------------------------------------------------------------------

#: Two combinations (reg_weight) x two seeds of BPRMF, two epochs each: four small runs.
FOUR_RUNS = [
    "train", "--model", "bprmf", "--dataset", "synthetic-small", "--no-mg", "--epochs", "2", "--batch-size", "256",
    "--valid-metric", "recall@20", "--set", "embedding_size=8", "--set", "reg_weight=0.001,0.1", "--seeds", "2",
]


def test_logdir_writes_one_tensorboard_run_per_combination_and_seed_with_the_results_values(tmp_path, monkeypatch, capsys):
    """Read back with TensorBoard's own event reader. Exact equality after float32 rounding:
    TensorBoard stores every scalar as a float32, and nothing else touches the values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import mirrorgrad_jax.cli.train as train_command
    from mirrorgrad_jax.train import event_run_folders, metric_tag

    monkeypatch.setattr(train_command, "_interactive", lambda: True)  # as on a terminal: progress bars
    code = main([*FOUR_RUNS, "--logdir", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json")])
    assert code == 0
    out, err = capsys.readouterr()
    assert out.count("epoch   1  loss") == 4, "the per-epoch lines stay, printed above the bars"
    assert "runs: 100%" in err and "4/4" in err and "bprmf plain" in err, "a bar over the runs, one over each run's epochs"

    report = json.loads((tmp_path / "r.json").read_text())
    runs = {
        f"bprmf/plain-reg_weight={run['model_config']['reg_weight']:g}/seed{seed['seed']}": (run, seed)
        for run in report["runs"]
        for seed in run["seeds"]
    }
    assert event_run_folders(tmp_path / "runs") == sorted(runs) and len(runs) == 4

    def f32(value):
        return float(np.float32(value))

    for name, (run, result) in runs.items():
        events = EventAccumulator(str(tmp_path / "runs" / name), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()

        def curve(tag):
            return [(e.step, e.value) for e in events.Scalars(tag)]

        history = result["history"]
        assert curve("train/loss") == [(h["epoch"], f32(h["loss"])) for h in history]
        assert curve("train/lr") == [(h["epoch"], f32(h["lr"])) for h in history]
        assert curve("time/eval_s") == [(h["epoch"], f32(h["eval_s"])) for h in history]
        for split in ("valid", "test"):
            for metric in history[0][split]:
                assert curve(metric_tag(split, metric)) == [(h["epoch"], f32(h[split][metric])) for h in history], (name, split, metric)
        best = result["best_epoch"]
        assert curve("best_epoch") == [(best, f32(best))]
        for key in ("best_valid", "test_at_best"):
            assert {metric: curve(metric_tag(key, metric)) for metric in result[key]} == {m: [(best, f32(v))] for m, v in result[key].items()}
        settings = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"| model_config.reg_weight | {run['model_config']['reg_weight']} |" in settings
        assert f"| train_config.seed | {result['seed']} |" in settings and "| mg.enabled | false |" in settings
        assert set(events.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_logdir_without_the_writer_says_what_to_install_in_one_line(tmp_path, monkeypatch, capsys):
    import mirrorgrad_jax.data

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were not installed: import fails
    monkeypatch.setattr(mirrorgrad_jax.data, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read before --logdir was checked"))
    code = main([*FOUR_RUNS, "--logdir", str(tmp_path / "runs")])
    _one_line_error(capsys, code, "--logdir", "tensorboardX", "pip install 'mirrorgrad-jax[tensorboard]'")
    assert not (tmp_path / "runs").exists()


def test_a_logdir_holding_runs_of_the_grid_is_refused_before_training_unless_resuming_from_checkpoints(tmp_path, monkeypatch, capsys):
    import mirrorgrad_jax.data

    earlier = tmp_path / "runs" / "bprmf" / "plain-reg_weight=0.1" / "seed1000"
    earlier.mkdir(parents=True)
    (earlier / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setattr(mirrorgrad_jax.data, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read before --logdir was checked"))
    _one_line_error(capsys, main([*FOUR_RUNS, "--logdir", str(tmp_path / "runs")]), "already holds TensorBoard runs of this grid", "seed1000")
    assert sorted(p.name for p in (tmp_path / "runs" / "bprmf").iterdir()) == ["plain-reg_weight=0.1"]

    def reached(*args, **kwargs):
        raise ConfigError("the dataset is being read")

    # Resuming from checkpoints continues the curves: the check passes and the dataset is read (here: refused).
    # --resume without checkpoints to resume from is refused outright
    _one_line_error(capsys, main([*FOUR_RUNS, "--logdir", str(tmp_path / "runs"), "--resume"]), "--resume continues the runs kept in --checkpoint-dir")
    monkeypatch.setattr(mirrorgrad_jax.data, "load_dataset", reached)
    resumed = main([*FOUR_RUNS, "--logdir", str(tmp_path / "runs"), "--resume", "--checkpoint-dir", str(tmp_path / "ckpt")])
    _one_line_error(capsys, resumed, "the dataset is being read")


def test_a_grid_over_epochs_resumed_under_larger_caps_goes_on_in_the_same_tensorboard_runs(tmp_path, capsys):
    """The epoch cap only says where a run ends, so it is not in the run names: a resumed
    grid with larger caps adds epochs to the runs it began instead of starting new folders."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mirrorgrad_jax.train import event_run_folders

    grid = [*FOUR_RUNS[:-2], "--seeds", "1", "--logdir", str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    grid[grid.index("--epochs") + 1] = "1,2"
    assert main(grid) == 0
    first = event_run_folders(tmp_path / "runs")
    assert len(first) == 4 and not any("epochs" in name for name in first), first
    grid[grid.index("--epochs") + 1] = "2,3"
    assert main([*grid, "--resume"]) == 0
    capsys.readouterr()
    assert event_run_folders(tmp_path / "runs") == first
    steps = []
    for name in first:
        events = EventAccumulator(str(tmp_path / "runs" / name), size_guidance={"scalars": 0})
        events.Reload()
        steps.append([e.step for e in events.Scalars("train/loss")])
    assert sorted(steps) == [[0, 1], [0, 1], [0, 1, 2], [0, 1, 2]], steps


def test_no_progress_bars_when_the_output_is_not_a_terminal_and_none_with_quiet(monkeypatch, capsys):
    import mirrorgrad_jax.cli.train as train_command

    one_run = [*FOUR_RUNS[:-4], "--set", "reg_weight=0.01", "--epochs", "1"]
    assert main(one_run) == 0  # captured output: not a terminal
    out, err = capsys.readouterr()
    assert "epoch   0  loss" in out and "%|" not in err and "runs:" not in err, err
    monkeypatch.setattr(train_command, "_interactive", lambda: True)
    assert main([*one_run, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "epoch   0" not in out and "%|" not in err, err


_GOOD_RUN = {"model": "bprmf", "dataset": {"name": "synthetic-small", "num_users": 100, "num_items": 80},
             "model_config": {}, "train_config": {"seed": 1}, "dataset_source": "synthetic-small"}  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "synthetic-small"}, "its run metadata's dataset is not a record of the training data"),
        ({"dataset": {"name": "x", "num_items": 80}}, "its run metadata's dataset.num_users is not a positive whole number"),
        ({"train_config": {"seed": "one"}}, "its run metadata's train_config.seed is not a whole number"),
        ({"model_config": [1, 2]}, "its run metadata's model_config is not a mapping of settings"),
        ({"model": 3}, "its run metadata's model is not a model name"),
        ({"dataset_source": "large:scale=1000"}, "was trained on the generated dataset large:scale=1000; pass --dataset"),
    ],
)
def test_a_checkpoint_with_malformed_run_metadata_is_one_line(change, message, tmp_path, capsys):
    """A checkpoint from elsewhere: its metadata is checked before anything reads, builds or generates from it."""
    from mirrorgrad_jax.train.checkpoint import save_checkpoint

    path = tmp_path / "best.ckpt"
    save_checkpoint(path, {"params": {"x": np.zeros(1, np.float32)}}, {"meta": {**_GOOD_RUN, **change}, "epoch": 0})
    _one_line_error(capsys, main(["evaluate", str(path)]), message)


# ---------------------------------------------------------------------------------------
# `mirrorgrad demo` (what `make demo` runs).
# ---------------------------------------------------------------------------------------


def test_demo_prints_both_arms_and_mgs_relative_change_as_make_demo_runs_it(capsys):
    """One seed and one epoch of ``make demo``'s command: a table a person reads, its change from its own rows."""
    assert main(["demo", "--seeds", "1", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "VBPR on synthetic, test metrics at the best-validation epoch, mean ± std over 1 seed" in lines
    rows = {line[:18].strip(): line[18:].split() for line in lines if line.startswith(("no MG", "MG (alpha2=0.2)", "relative change"))}
    assert set(rows) == {"no MG", "MG (alpha2=0.2)", "relative change"}
    # each arm row: four "mean ± std" cells; the change row: (MG - no MG) / no MG per metric
    base, mg = (rows[arm][0::3] for arm in ("no MG", "MG (alpha2=0.2)"))
    assert len(base) == len(mg) == len(rows["relative change"]) == 4
    for b, g, change in zip(base, mg, rows["relative change"]):
        assert 0 < float(b) <= 1 and 0 < float(g) <= 1
        # the cells are rounded to 4 places (an error up to 1e-4 in g - b) and the change to 0.1%
        assert abs(float(change.rstrip("%")) - 100 * (float(g) - float(b)) / float(b)) <= 100 * 1e-4 / float(b) + 0.05


@pytest.mark.parametrize("argv, message", [(["--seeds", "0"], "--seeds must be at least 1, got 0"), (["--epochs", "-1"], "--epochs must be at least 1, got -1")])
def test_demo_refuses_a_count_below_one_in_one_line(argv, message, capsys):
    _one_line_error(capsys, main(["demo", *argv]), message)


# ---------------------------------------------------------------------------------------
# Values that used to reach a traceback after the data was loaded (a CLI sweep, 2026-12-07).
# ---------------------------------------------------------------------------------------

_TRAIN = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--quiet"]
_FLATNESS = ["flatness", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--arms", "none", "--quiet"]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        ([*_TRAIN, "--seed", "-1"], ["TrainConfig.seed must be an integer in [0, 2**63), got -1"]),
        ([*_TRAIN, "--seed", "99999999999999999999999"], ["TrainConfig.seed must be an integer in [0, 2**63)"]),
        ([*_TRAIN, "--batch-size", "1e30"], ["TrainConfig.batch_size must be an integer in [1, 2**31), got 1e+30"]),
        ([*_TRAIN, "--beta", "1e30"], ["MGConfig.beta must be an integer in [1, 2**31)"]),
        ([*_TRAIN, "--alpha1", "inf"], ["MGConfig.alpha1 must be a finite number, got 'inf' (str)"]),
        ([*_TRAIN, "--alpha1", "1e308"], ["MGConfig.alpha1 must be a finite number, got 1e+308", "beyond float32's largest number"]),
        ([*_TRAIN, "--lr", "1e39"], ["learning_rate must be a finite number > 0, got 1e+39", "beyond float32's largest number"]),
        ([*_TRAIN, "--set", "reg_weight=[]"], ["reg_weight: an empty list has no value to train with"]),
        ([*_TRAIN, "--min-epochs", "5"], ["min_epochs", "must satisfy min_epochs <= epochs"]),
        ([*_TRAIN, "--results", "{adir}"], ["--results", "is a folder; give the JSON file to write"]),
        ([*_TRAIN, "--checkpoint-dir", "{afile}"], ["--checkpoint-dir", "not a folder"]),
        ([*_TRAIN, "--alpha2", "0.1,"], ["--alpha2 '0.1,': an empty value in a comma-separated list"]),
        ([*_TRAIN, "--set", "embedding_size=,"], ["--set embedding_size=',': an empty value in a comma-separated list"]),
        ([*_FLATNESS, "--directions", "0", "--out-dir", "{new}"], ["--directions must be at least 1, got 0"]),
        ([*_FLATNESS, "--iterations", "0", "--out-dir", "{new}"], ["--iterations must be at least 1, got 0"]),
        ([*_FLATNESS, "--sharpness-rho", "-1", "--out-dir", "{new}"], ["--sharpness-rho must be a finite number >= 0, got -1"]),
        ([*_FLATNESS, "--sharpness-rho", "nan", "--out-dir", "{new}"], ["--sharpness-rho must be a finite number >= 0, got nan"]),
        ([*_FLATNESS, "--out-dir", "{afile}"], ["--out-dir", "not a folder"]),
        (["datasets", "large:scale=inf"], ["expected large:scale=S with S > 0"]),
        (["datasets", "{inter_folder}"], ["no .inter file in"]),
        (["datasets", "{bad_graph}"], ["user_graph.npz is not an .npz archive"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--delimiter", "ab", "--quiet"], ["--delimiter must be one character", "'ab'"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--items", "{empty}", "--quiet"], ["is empty (given as --items)"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--seed", "-1", "--quiet"], ["--seed: PrepareOptions.seed must be an integer in [0, 2**63)"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--batch-size", "0", "--quiet"], ["--batch-size: PrepareOptions.text_batch_size must be"]),
        # Options the rest of the line makes meaningless: refused, not ignored.
        (["prepare", "folder", "{source}", "--out", "{new}", "--split", "temporal", "--odd-row-to", "test", "--quiet"], ["--odd-row-to sets the per-user split, and --split temporal splits by time"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--split", "temporal", "--seed", "3", "--quiet"], ["--seed sets the per-user split"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--image-weights", "{afile}", "--quiet"], ["--image-weights encodes item images, and there are none"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--text-model", "{adir}", "--quiet"], ["--text-model encodes item texts, and there are none"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--images", "{adir}/nope", "--image-weights", "{afile}", "--quiet"], ["/nope: no such folder"]),
        (["prepare", "folder", "{source}", "--out", "{new}", "--user-column", "user", "--item-column", "user", "--quiet"], ["--user-column and --item-column name the same column, 'user'"]),
        (["prepare", "amazon", "--ratings", "{afile}", "--out", "{new}", "--allow-missing-meta", "--quiet"], ["--allow-missing-meta fills items the metadata leaves out, and there is no --meta"]),
        (["prepare", "amazon", "--ratings", "{afile}", "--out", "{new}", "--text-model", "{adir}", "--quiet"], ["--text-model encodes item texts, and there are none: give --meta"]),
    ],
)
def test_values_that_reached_a_traceback_are_one_line_and_write_nothing(argv, fragments, tmp_path, monkeypatch, capsys):
    from mirrorgrad_jax.data import make_synthetic, write_mmrec

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "inter" / "inter.inter").mkdir(parents=True)  # a folder named like the interactions file
    write_mmrec(make_synthetic(num_users=40, num_items=30, seed=1, name="graph"), tmp_path / "graph")
    (tmp_path / "graph" / "user_graph.npz").write_bytes(b"not a zip archive")
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "interactions.csv").write_text("user,item\n" + "".join(f"u{u},i{(u + k) % 9}\n" for u in range(12) for k in range(6)))
    places = {"afile": "afile", "adir": "adir", "new": "new", "empty": "empty.csv", "inter_folder": "inter", "bad_graph": "graph", "source": "source"}
    argv = [a.format(**{k: str(tmp_path / v) for k, v in places.items()}) for a in argv]
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    _one_line_error(capsys, main(argv), *fragments)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing written, nothing left


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--model", ""], "argument --model: expected a value, got an empty one"),
        (["train", "--dataset", ""], "argument --dataset: expected a value, got an empty one"),
        (["train", "--config", ""], "argument --config: expected a value"),
        (["train", "--results", ""], "argument --results: expected a value"),
        (["train", "--set", ""], "argument --set: expected a value"),
        (["evaluate", "", "--quiet"], "argument checkpoint: expected a value"),
        (["evaluate", "{afile}", "--metrics", ""], "argument --metrics: expected a value"),
        (["evaluate", "{afile}", "--metrics", ","], "argument --metrics: expected a value"),
        (["datasets", ""], "argument name: expected a value"),
        (["robustness", "--kinds", ""], "argument --kinds: expected a value"),
        (["robustness", "--out-dir", ""], "argument --out-dir: expected a value"),
        # The folder to build: empty once meant the current folder, which prepare then replaced.
        (["prepare", "amazon", "--ratings", "{afile}", "--out", ""], "argument --out: expected a value"),
        (["prepare", "folder", "{adir}", "--out", ""], "argument --out: expected a value"),
        # argparse's own mistakes: one line naming --help, not the command's whole usage.
        (["train", "--select-on", "foo"], "argument --select-on: invalid choice: 'foo'"),
        (["train", "--device-budget-mb", "abc"], "argument --device-budget-mb"),
        (["robustness", "--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
        (["prepare", "amazon", "--ratings", "{afile}"], "the following arguments are required: --out"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["train", "--mg", "--no-mg"], "argument --no-mg: not allowed with argument --mg"),
    ],
)
def test_usage_mistakes_and_empty_values_are_one_line_naming_help_and_change_nothing(argv, fragment, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    argv = [a.format(afile=str(tmp_path / "afile"), adir=str(tmp_path / "adir")) for a in argv]
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert fragment in err and "--help)" in err and "Traceback" not in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # the current folder untouched


def test_a_run_that_finishes_no_epoch_is_one_line_for_the_analysis_commands_and_leaves_no_folder(tmp_path, capsys):
    """A learning rate that makes the loss non-finite at once: nothing to measure, said in one line (it was a RuntimeError)."""
    from mirrorgrad_jax.errors import NoEpochFinished, TrainingError

    assert issubclass(NoEpochFinished, TrainingError) and issubclass(NoEpochFinished, RuntimeError)  # old callers still catch it
    out = tmp_path / "out"
    code = main([*_FLATNESS, "--lr", "1e30", "--optimizer", "sgd", "--out-dir", str(out)])
    _one_line_error(capsys, code, "training stopped before any epoch finished (nan_loss); there is nothing to measure")
    assert not out.exists()


def test_a_tab_delimiter_may_be_written_as_backslash_t_or_tab():
    from mirrorgrad_jax.cli.prepare import _delimiter

    assert [_delimiter(text) for text in ("\\t", "tab", "\t", ";", None)] == ["\t", "\t", "\t", ";", None]


def test_a_model_run_without_its_packaged_config_is_told_what_optimizer_settings_it_leaves_out(monkeypatch, capsys):
    """LATTICE's learning-rate schedule and SLMRec's weight decay live in their packaged configs,
    not in the models: ``--model lattice`` alone trains with a constant rate, and says so."""
    import mirrorgrad_jax.data

    def reached(*args, **kwargs):
        raise ConfigError("the dataset is being read")

    monkeypatch.setattr(mirrorgrad_jax.data, "load_dataset", reached)
    for argv, note in (
        (["--model", "lattice"], "note: lattice's packaged config trains with lr_schedule=[0.96, 50], which this run leaves out (--config lattice"),
        (["--model", "slmrec"], "note: slmrec's packaged config trains with weight_decay=0.0001, which this run leaves out (--config slmrec runs the packaged settings; or pass --weight-decay)"),
    ):
        assert main(["train", *argv, "--dataset", "synthetic-small"]) == 2
        assert note in capsys.readouterr().out
    # DA-MRS's packaged schedule is the constant default: nothing is left out.
    for argv in (["--model", "slmrec", "--weight-decay", "0"], ["--config", "lattice"], ["--model", "vbpr"], ["--model", "lattice", "--quiet"], ["--model", "damrs"]):
        assert main(["train", *argv, "--dataset", "synthetic-small"]) == 2
        assert "packaged config trains with" not in capsys.readouterr().out, argv


def test_train_help_says_what_each_grid_flag_sets_and_its_default(capsys):
    from mirrorgrad_jax.cli.train import _FLAGS
    from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig

    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "value, or comma-separated values for a grid" not in text  # the one text all nineteen once shared
    for flag, expected in [("--lr", TrainConfig().learning_rate), ("--patience", TrainConfig().patience), ("--alpha2", MGConfig().alpha2),
                           ("--asam-eta", MethodConfig().eta), ("--optimizer", TrainConfig().optimizer)]:  # fmt: skip
        entry = text.split(f"{flag} VALUE ", 1)[1].split(" --", 1)[0]
        assert f"(default {expected}; a comma list is a grid)" in entry, (flag, entry)
    assert text.count("a comma list is a grid") == len(_FLAGS)


def test_a_tab_or_a_space_is_a_delimiter_not_an_empty_value(tmp_path, capsys):
    """--delimiter takes the character itself: only an exactly empty value is refused as empty."""
    from mirrorgrad_jax.data import load_mmrec

    rows = [(u, (u + k) % 9) for u in range(12) for k in range(6)]
    for delimiter, name in (("\t", "tab"), (" ", "space")):
        source = tmp_path / name
        source.mkdir()
        (source / "interactions.txt").write_text(f"user{delimiter}item\n" + "".join(f"u{u}{delimiter}i{i}\n" for u, i in rows))
        out = tmp_path / f"data-{name}"
        argv = ["prepare", "folder", str(source), "--interactions", str(source / "interactions.txt"), "--delimiter", delimiter,
                "--out", str(out), "--no-user-graph", "--quiet"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        assert load_mmrec(out, verbose=False).num_users == 12


def test_evaluate_given_a_runs_folder_names_the_checkpoint_inside_it(tmp_path, capsys):
    """--checkpoint-dir keeps one folder per run, holding best.ckpt and last.ckpt: a natural thing to pass by mistake."""
    run = tmp_path / "combo0-seed999"
    (run / "best.ckpt").mkdir(parents=True)
    (run / "last.ckpt").mkdir()
    line = _one_line_error(capsys, main(["evaluate", str(run)]), f"{run} is a run's folder, not a checkpoint: give {run / 'best.ckpt'}")
    assert "(it holds best.ckpt and last.ckpt)" in line
    _one_line_error(capsys, main(["evaluate", str(tmp_path)]), "is not a mirrorgrad checkpoint (it has no 'meta' and 'arrays' items)")


def test_a_bad_value_given_by_a_flag_is_reported_under_that_flag(capsys):
    _one_line_error(capsys, main(["train", "--dataset", "synthetic-small", "--lr", "fast"]), "--lr: TrainConfig.learning_rate must be a finite number > 0")
    _one_line_error(capsys, main(["train", "--dataset", "synthetic-small", "--method", "sam", "--rho", "-1"]), "--rho: MethodConfig.rho must be")
    _one_line_error(capsys, main(["train", "--dataset", "synthetic-small", "--asam-eta", "-1", "--method", "asam"]), "--asam-eta: MethodConfig.eta")


def test_train_options_reach_the_run_and_change_it_as_documented(tmp_path):
    """--clip-grad-norm, --apply-to, --schedule and --zero-grad through the command line: each is
    recorded in the results and changes the losses, except --zero-grad on BPR-MF, whose loss reads
    every parameter array (the option acts on arrays a batch's loss leaves out: LATTICE's graph
    learner, tests/test_trainer_hooks.py). 4 batches an epoch (1,820 rows by 512), so MG's global
    schedule mirrors other batches than the per-epoch one in the second epoch."""

    def run(*flags):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        argv = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "2", "--batch-size", "512", "--quiet", "--results", str(out)]
        assert main([*argv, *flags]) == 0
        result = json.loads(out.read_text())["runs"][0]
        return result, [h["loss"] for h in result["seeds"][0]["history"]]

    _, base = run()
    for flags, (section, key, value), changes in [
        (["--clip-grad-norm", "1e-4"], ("train", "clip_grad_norm", 1e-4), True),
        (["--apply-to", "update"], ("mg", "apply_to", "update"), True),
        (["--schedule", "global"], ("mg", "schedule", "global"), True),
        (["--zero-grad", "none"], ("train", "zero_grad", "none"), False),
        (["--weight-decay", "0.5"], ("train", "weight_decay", 0.5), True),
        # One device as a mesh of one, tables "sharded" over it: the same program's numbers.
        (["--mesh", "data=1", "--shard-tables"], ("train", "shard_tables", True), False),
    ]:
        result, losses = run(*flags)
        assert result[section][key] == value, (flags, result[section])
        assert (losses != base) == changes, (flags, losses, base)
    assert run("--schedule", "global")[1][0] == base[0]  # the schedules agree on the first epoch
    # --min-epochs: patience 0 stops this run after its second epoch; with --min-epochs 3, not before the third.
    assert len(run("--epochs", "6", "--patience", "0")[1]) == 2
    result, losses = run("--epochs", "6", "--patience", "0", "--min-epochs", "3")
    assert result["train"]["min_epochs"] == 3 and len(losses) >= 3


def test_output_cut_short_by_its_reader_stops_quietly(tmp_path):
    """`mirrorgrad models | head -2`: the reader leaves early; the command stops with 141 (a
    shell's SIGPIPE status) and no traceback, as Unix tools do. Run as a user runs it."""
    proc = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m mirrorgrad_jax models | head -2; exit "${{PIPESTATUS[0]}}"'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc.returncode  # 0 when the whole listing fit the pipe before head left
