"""The command line as a user runs it: train with grids and seeds, results JSON, evaluate, errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

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


def test_malformed_inter_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("userID\titemID\tx_label\n0\t1\t0\n1\tx\t0\n")
    line = _one_line_error(capsys, main(["train", "--dataset", str(folder), "--epochs", "1"]), "bad.inter", "line 3")
    assert "itemID='x'" in line


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
