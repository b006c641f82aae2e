"""The bookkeeping of the resumable benchmark scripts (no training here, but for one 2-epoch run of device_run.sh).

These scripts fill long grids over several sessions and machines, so the parts that decide
what still has to run, how partial files are read and how the table picks its arms must be
right: a slip would silently rerun, skip or mislabel published numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    benchmarks = os.path.join(ROOT, "benchmarks")
    if benchmarks not in sys.path:  # as when run as a script: the scripts import benchmarks/reporting.py
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(benchmarks, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def acc():
    return _load("accuracy_table")


def _row(model, dataset, alpha2, seed, valid, test, epoch=10, epochs_run=21, stop_reason="patience"):
    return {
        "model": model, "dataset": dataset, "alpha2": alpha2, "seed": seed, "best_epoch": epoch,
        "valid": {"recall@20": valid}, "test": {"recall@20": test, "ndcg@20": test / 2},
        "epochs_run": epochs_run, "stop_reason": stop_reason,
    }


def test_pending_runs_are_seed_major_and_skip_finished(acc):
    done = [_row("vbpr", "synthetic", None, 999, 0.3, 0.3)]
    todo = acc.pending_runs(done, ["vbpr", "bm3"], ["synthetic"], seeds=2)
    assert ("vbpr", "synthetic", None, 999) not in todo
    assert len(todo) == 2 * 4 * 2 - 1
    # every run of the first seed comes before any run of the second
    seeds = [t[3] for t in todo]
    assert seeds == sorted(seeds)
    assert todo[0] == ("vbpr", "synthetic", 0.1, 999)


def test_a_training_free_model_gets_one_plain_run(acc):
    todo = acc.pending_runs([], ["itemknncbf", "vbpr"], ["synthetic"], seeds=3)
    knn = [t for t in todo if t[0] == "itemknncbf"]
    assert knn == [("itemknncbf", "synthetic", None, 999)]
    assert len(todo) - len(knn) == 3 * 4


def test_read_runs_skips_a_truncated_last_line(acc, tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    good = _row("vbpr", "synthetic", None, 999, 0.3, 0.3)
    acc.append_run(str(path), good)
    with open(path, "a") as f:
        f.write('{"model": "vbpr", "dat')  # a writer killed mid-line
    rows = acc.read_runs(str(path))
    assert rows == [json.loads(json.dumps(good))]
    assert "truncated" in capsys.readouterr().err
    assert acc.read_runs(str(tmp_path / "missing.jsonl")) == []


def test_summary_chooses_alpha2_on_validation_not_test(acc):
    rows = [_row("m", "d", None, s, 0.30, 0.30) for s in (999, 1000)]
    # alpha2 0.1: better on validation, worse on test; alpha2 0.3: the opposite
    rows += [_row("m", "d", 0.1, s, 0.40, 0.20) for s in (999, 1000)]
    rows += [_row("m", "d", 0.3, s, 0.10, 0.50) for s in (999, 1000)]
    rows[0].update(epochs_run=100, stop_reason="max_epochs")  # one plain run hit the epoch cap
    lines = acc.summarise(rows, "recall@20")
    mg = [l for l in lines if "| MG |" in l]
    assert len(mg) == 1 and "| 0.1 |" in mg[0]
    assert "0.2000 ± 0.0000" in mg[0] and "-33.3%" in mg[0]
    assert "| 0 of 2 (21 epochs max) |" in mg[0]
    plain = [l for l in lines if "| no MG |" in l]
    assert "| 1 of 2 (100 epochs max) |" in plain[0]
    # Rows that record their settings carry their own cap (runs made with different caps mix in one file).
    for r, cap in zip(rows[:2], (100, 300)):
        r["settings"] = {"train": {"epochs": cap}}
    plain = [l for l in acc.summarise(rows, "recall@20") if "| no MG |" in l]
    assert "| 1 of 2 (100 epochs max; cap 100/300) |" in plain[0]
    paired = [l for l in acc.paired(rows, "recall@20") if l.startswith("| m |")]
    # chosen arm: -0.1 on both seeds; over all alpha2, 2 of 4 MG runs beat their seed
    assert "-0.1000, -0.1000" in paired[0] and "2 / 4" in paired[0]


def test_robustness_learning_rates_and_cell_keys():
    rob = _load("robustness")
    assert rob.learning_rate("vbpr", "synthetic", "sgd") == rob.LEARNING_RATES["sgd"]
    assert rob.learning_rate("vbpr", "movielens-100k", "sgd") == rob.SGD_LR_OVERRIDES[("vbpr", "movielens-100k")]
    assert rob.learning_rate("vbpr", "movielens-100k", "adam") == rob.LEARNING_RATES["adam"]
    assert rob.learning_rate("freedom", "movielens-100k", "adam") == rob.LEARNING_RATES["adam"]
    assert rob.learning_rate("freedom", "synthetic", "sgd") == rob.SGD_LR_OVERRIDES[("freedom", None)]
    old = {"model": "freedom", "dataset": "synthetic", "optimizer": "sgd"}  # recorded before lr was stored
    new = dict(old, learning_rate=rob.learning_rate("freedom", "synthetic", "sgd"))
    assert rob.cell_key(old) != rob.cell_key(new)  # the lr-0.5 cell does not stand in for the new one


def test_run_child_reads_the_result_line_and_survives_failures(tmp_path, capsys):
    epoch_time = _load("epoch_time")
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, time\n"
        "mode = sys.argv[1]\n"
        "if mode == 'ok': print('noise'); print('RESULT {\"x\": 1}')\n"
        "elif mode == 'fail': sys.exit('broken')\n"
        "else: time.sleep(30)\n"
    )
    row = epoch_time.run_child([str(script), "ok"], "ok", timeout=60)
    assert row["x"] == 1 and row["wall_s"] > 0
    assert epoch_time.run_child([str(script), "fail"], "child fail", timeout=60) is None
    assert "child fail failed (exit 1" in capsys.readouterr().err
    assert epoch_time.run_child([str(script), "sleep"], "child sleep", timeout=0.5) is None
    assert "child sleep: skipped, longer than" in capsys.readouterr().err


HLO_TEXT = """HloModule jit_scan_normal, is_scheduled=true

FileNames
1 "{root}/models/slmrec.py"
2 "{root}/models/base.py"

FunctionNames
1 "SLMRec.loss"
2 "dense"

FileLocations
1 {{file_name_id=1 function_name_id=1 line=215 end_line=215 column=0 end_column=9}}
2 {{file_name_id=2 function_name_id=2 line=265 end_line=265 column=0 end_column=9}}

StackFrames
1 {{file_location_id=1 parent_frame_id=1}}
2 {{file_location_id=2 parent_frame_id=1}}

%body (p: (s32[], f32[4,2])) -> (s32[], f32[4,2]) {{
  %dot.9 = f32[4,2]{{1,0}} dot(%a, %b), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}, metadata={{op_name="jit(scan_normal)/while/body/dot_general" stack_frame_id=1}}
  %ynn_fusion.3 = f32[4,2]{{1,0}} fusion(f32[4,3]{{1,0}} %a, f32[3,2]{{1,0}} %b), kind=kCustom, calls=%fused.1, metadata={{op_name="jit(scan_normal)/while/body/dot_general" stack_frame_id=2}}
  %exp.2 = f32[4,2]{{1,0}} exponential(%ynn_fusion.3), metadata={{op_name="jit(scan_normal)/while/body/exp" stack_frame_id=2}}
  ROOT %add.1 = f32[4,2]{{1,0}} add(%dot.9, %ynn_fusion.3), metadata={{op_name="jit(scan_normal)/while/body/add" stack_frame_id=1}}
}}

ENTRY %main {{
  %while.6 = (s32[], (f32[4,2]{{1,0}}, f32[2]{{0}})) while((s32[], (f32[4,2]{{1,0}}, f32[2]{{0}})) %t), condition=%cond, body=%body
}}
"""


def test_profile_step_attributes_ops_to_source_lines_and_skips_loops(tmp_path):
    prof = _load("profile_step")
    (tmp_path / "module_0007.jit_scan_normal.cpu_after_optimizations.txt").write_text(HLO_TEXT.format(root=ROOT))
    modules = prof.parse_hlo_dump(str(tmp_path))["jit_scan_normal"]
    assert modules["ynn_fusion.3"] == ("fusion", "jit(scan_normal)/while/body/dot_general", "models/base.py:265 dense", ("a", "b"))
    assert modules["add.1"] == ("add", "jit(scan_normal)/while/body/add", "models/slmrec.py:215 SLMRec.loss", ("dot.9", "ynn_fusion.3"))
    assert modules["while.6"][0] == "while"  # a tuple-shaped instruction
    events = [
        # (program, run id, op, start s, recorded s). The matmul is launched at 0 (recorded short);
        # the fusion ends at 0.3; nothing runs until 0.4: the add waited for the matmul, so the
        # idle 0.1 s is the matmul's. Then nothing until exp at 0.5: exp needs no matmul, so that
        # 0.05 s goes to the op that ended last (the add). The while holds all (not counted again).
        ("jit_scan_normal", 1, "dot.9", 0.0, 0.0),
        ("jit_scan_normal", 1, "ynn_fusion.3", 0.0, 0.3),
        ("jit_scan_normal", 1, "add.1", 0.4, 0.05),
        ("jit_scan_normal", 1, "exp.2", 0.5, 0.0),
        ("jit_scan_normal", 1, "while.6", 0.0, 50.0),
        ("jit_scan_normal", 2, "add.1", 0.5, 0.05),  # another execution (run id): the time between is not charged
        ("jit_every_block", 3, "custom-call.2", 9.0, 0.4),  # not in the dump: kind from its name
    ]
    charged = sorted((m, op, round(t, 6)) for m, op, t in prof.charge_idle_gaps(events, {"jit_scan_normal": modules}))
    assert charged == sorted([
        ("jit_scan_normal", "dot.9", 0.0), ("jit_scan_normal", "dot.9", 0.1), ("jit_scan_normal", "ynn_fusion.3", 0.3),
        ("jit_scan_normal", "add.1", 0.05), ("jit_scan_normal", "add.1", 0.05), ("jit_scan_normal", "exp.2", 0.0),
        ("jit_scan_normal", "add.1", 0.05), ("jit_every_block", "custom-call.2", 0.4),
    ])  # fmt: skip
    text = "\n".join(prof.report(charged, {"jit_scan_normal": modules}, epochs=2, top=5))
    assert "| jit_scan_normal | 0.275 | 57.9% |" in text
    assert "| jit_every_block | 0.200 | 42.1% |" in text
    assert "| models/base.py:265 dense (train) | 0.150 | 31.6% | exponential, fusion |" in text
    assert "| models/slmrec.py:215 SLMRec.loss (train) | 0.125 | 26.3% | add, dot |" in text
    assert "| ? (evaluation / other) | 0.200 | 42.1% | custom-call |" in text
    assert "while.6" not in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "slmrec", "--graph", "{missing}"], "the Baby graph is not at"),
        (["--model", "slmrec", "--settings", "n_layers"], "--settings takes key=value"),
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--model", "slmrec", "--settings", "n_layers=-1"], "n_layers must be an integer in [0, 2**31)"),
        (["--model", "slmrec", "--mg", "--method", "sam"], "--mg and --method sam are two training methods: name one"),
        (["--model", "slmrec", "--method-options", "rho=0.5"], "--method-options needs --method"),
        (["--model", "slmrec", "--method", "asam", "--method-options", "rho"], "--method-options takes key=value"),
        (["--model", "slmrec", "--method", "asam", "--method-options", "rho=-1"], "MethodConfig.rho must be"),
        (["--model", "slmrec", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--model", "slmrec", "--method", "sam", "--method-options", "eta=0.5"], "--method-options: sam does not read eta"),
        (["--model", "vbpr", "--dataset", "{featureless}"], "VBPR needs item features, but dataset 'baby' has none"),
    ],
)
def test_profile_step_reports_user_mistakes_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    prof = _load("profile_step")
    graph = tmp_path / "graph"
    graph.mkdir()
    (graph / "baby.inter").write_text("")  # never read: the mistakes are caught first
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(prof.tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("XLA_FLAGS", "")
    featureless = _tiny_baby_graph(tmp_path / "featureless")  # an MMRec folder with interactions only
    argv = [a.format(missing=str(tmp_path / "none"), featureless=str(featureless)) for a in args]
    if "--graph" not in argv:
        argv += ["--graph", str(graph)]
    with pytest.raises(SystemExit) as exit_info:
        prof.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert list(scratch.iterdir()) == []  # the dump / trace folder is removed


def test_profile_step_counts_every_training_program_the_trainer_compiles_as_training():
    """The single steps are jitted under their functions' names: each must be in TRAIN_PROGRAMS."""
    import optax

    from mirrorgrad_jax.optim.steps import make_train_steps

    prof = _load("profile_step")
    loss = lambda params, batch, key: params["w"] ** 2  # noqa: E731
    names = set()
    for kind in ({}, {"mirror": False}, {"mirror": False, "perturbed_pass": True}):
        steps = make_train_steps(loss, optax.sgd(0.1), **kind)
        names |= {f"jit_{steps.normal.__name__}", f"jit_{steps.mirror.__name__}"}
    assert names == {"jit_normal", "jit_mirrored", "jit_perturbed"} and names <= prof.TRAIN_PROGRAMS


def test_profile_step_profiles_a_two_pass_method_as_its_usage_shows(tmp_path, capsys):
    """``--method asam --method-options rho=0.5`` on a tiny hand-made Baby graph, then ``--dataset synthetic-small``; one epoch each."""
    prof = _load("profile_step")
    out = tmp_path / "profile.md"
    prof.main(["--model", "bprmf", "--method", "asam", "--method-options", "rho=0.5", "--epochs", "1",
               "--graph", str(_tiny_baby_graph(tmp_path / "graph")), "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert text.lstrip().startswith("### bprmf with ASAM (rho=0.5): where the CPU time goes")
    prof.main(["--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--graph", "no-such-folder", "--out", str(out)])
    added = out.read_text()[len(text) :]
    assert added.lstrip().startswith("### bprmf on synthetic-small: where the CPU time goes")
    assert "--model bprmf --dataset synthetic-small --epochs 1`" in added and "| jit_normal |" in added and "(train) |" in added
    assert "--model bprmf --method asam --method-options rho=0.5 --epochs 1`" in text
    # the training program ran and its ops were charged to the model's and the optimizer's lines
    assert "| jit_perturbed |" in text and "(train) |" in text  # one batch: the single two-pass step
    assert text.strip() in capsys.readouterr().out


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
def test_device_run_patience_phase_returns_only_its_new_runs(tmp_path):
    """benchmarks/device_run.sh as a GPU session runs it, here on the CPU with a 2-epoch budget on synthetic-small.

    The patience phase must set aside the recorded runs of the cells named in
    PATIENCE_RERUN, train what is pending, and bring back exactly the runs it made.
    """
    recorded = [json.loads(line) for line in open(os.path.join(ROOT, "benchmarks", "results", "patience_sweep_runs.jsonl")) if line.strip()]
    rerun = [r for r in recorded if (r["model"], r["dataset"]) == ("vbpr", "synthetic")]
    assert rerun, "the committed runs file should hold the VBPR synthetic cell"
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PHASES": "patience",
        "WORKERS": "1",
        "PATIENCE_MODELS": "bprmf",
        "PATIENCE_DATASETS": "synthetic-small",
        "PATIENCE_BUDGETS": "bprmf=2",
        "PATIENCE_RERUN": "vbpr:synthetic",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
    }
    proc = subprocess.run(
        ["bash", "benchmarks/device_run.sh", str(out), "600"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{len(recorded) - len(rerun)} recorded runs kept; rerun here: ['vbpr:synthetic']" in proc.stdout
    new = [json.loads(line) for line in open(out / "patience_new.jsonl")]
    assert sorted((r["alpha2"] is not None, r["seed"]) for r in new) == sorted((mg, s) for mg in (False, True) for s in (999, 1000, 1001))
    assert all(r["model"] == "bprmf" and r["dataset"] == "synthetic-small" and r["budget"] == 2 for r in new)
    assert all(len(r["curves"]["valid"]["recall@20"]) == 2 for r in new)
    assert "| bprmf | synthetic-small | 2 |" in (out / "patience.md").read_text()


@needs_bash
def test_device_run_refuses_an_unknown_phase_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/device_run.sh", str(out), "60"], cwd=ROOT, env={**os.environ, "PHASES": "patience,patiense"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "device_run.sh: unknown phase 'patiense' in PHASES (choose from epoch, overhead, accuracy, patience, vs_reference)"
    ]
    assert not out.exists()


def _fm_row(method, knob, seed, valid, test, budget=3):
    epochs = budget if method in ("sam", "asam", "gnp") else 2 * budget
    return {
        "model": "bprmf", "dataset": "d", "method": method, "knob": knob, "seed": seed, "budget": budget, "epochs": epochs,
        "curves": {"valid": {"recall@20": valid[:epochs]}, "test": {"recall@20": test[:epochs]}, "train_s": [1.0] * epochs},
        "seconds": 1.0, "device": "cpu:cpu",
    }  # fmt: skip


def test_flat_minima_chooses_knobs_on_the_first_seeds_validation_then_runs_the_other_seeds():
    fm = _load("flat_minima")
    assert fm.pending_runs([], ["bprmf"], ["d"], 2, 3)[:2] == [("bprmf", "d", "plain", None, 999), ("bprmf", "d", "plain", None, 1000)]
    # Every knob of the first seed must run before the other seeds of that method start.
    first = [t for t in fm.pending_runs([], ["bprmf"], ["d"], 2, 3) if t[2] == "sam"]
    assert first == [("bprmf", "d", "sam", rho, 999) for rho in (0.01, 0.05, 0.1)]
    rising, flat = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3] * 6
    done = [_fm_row("sam", 0.01, 999, flat, flat), _fm_row("sam", 0.05, 999, rising, [0.0] * 6), _fm_row("sam", 0.1, 999, flat, [0.9] * 6)]
    # Chosen on validation within the budget (3 epochs: 0.3 beats 0.3 by order, not 0.9 test).
    assert fm.chosen_knobs(done, "bprmf", "d", 3)["sam"] == 0.01
    assert ("bprmf", "d", "sam", 0.01, 1000) in fm.pending_runs(done, ["bprmf"], ["d"], 2, 3)
    # Equal compute: plain twice the two-pass budget, MG at 4/3 gradient evaluations a batch on average,
    # exactly 1 + ceil(n / 3) / n for an epoch of n batches: 16 batches mirror 0, 3, ..., 15 (6);
    # 3 batches mirror batch 0 only, 1 + 1/3.
    assert (fm.equal_compute_epochs("plain", 30), fm.equal_compute_epochs("mg", 30), fm.equal_compute_epochs("sam", 30)) == (60, 45, 30)
    # Rounded down: 60 / 1.375 = 43.6 -> 43 (44 would cost 60.5 epochs of gradients); 60 / (4/3) = 45 exactly.
    assert (fm.equal_compute_epochs("mg", 30, 16), fm.equal_compute_epochs("mg", 30, 3), fm.equal_compute_epochs("sam", 30, 16)) == (43, 45, 30)
    assert fm.equal_compute_epochs("mg", 125, 16) == 181 and fm.equal_compute_epochs("mg", 125, 40) == 185
    assert fm.batches_per_epoch([{**_fm_row("mg", 0.1, 999, rising, rising), "batches": 16}]) == 16
    # The "none" selection reads only the first epochs asked for.
    assert fm.selection(_fm_row("plain", None, 999, rising, rising), 3).best_epoch == 2


def test_logdir_of_a_benchmark_run_is_one_tensorboard_run_per_attempt_with_the_rows_values(acc, tmp_path):
    """A training-free model keeps it short: one evaluation, written as epoch 0 and as the result.
    Exact after float32 rounding (TensorBoard stores scalars as float32)."""
    import numpy as np

    from mirrorgrad_jax.train import event_run_folders, read_scalars

    logdir = str(tmp_path / "runs")
    rows = [acc.run_one("itemknncbf", "synthetic-small", None, 999, 1, 1, "recall@20", logdir) for _ in range(2)]
    # A second attempt at the same run gets a folder of its own: two attempts never share curves.
    assert event_run_folders(logdir) == ["itemknncbf/synthetic-small/plain/seed999", "itemknncbf/synthetic-small/plain/seed999-2"]
    scalars = read_scalars(os.path.join(logdir, "itemknncbf", "synthetic-small", "plain", "seed999"))
    assert scalars["valid/recall_at_20"] == [(0, float(np.float32(rows[0]["valid"]["recall@20"])))]
    assert scalars["test_at_best/recall_at_20"] == [(0, float(np.float32(rows[0]["test"]["recall@20"])))]


@pytest.mark.parametrize("script", ["accuracy_table", "patience_sweep", "robustness", "epoch_time"])
def test_logdir_without_the_writer_stops_a_benchmark_in_one_line_before_it_runs(script, tmp_path, monkeypatch, capsys):
    module = _load(script)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were not installed: import fails
    runs = tmp_path / "runs.jsonl"
    with pytest.raises(SystemExit) as stop:
        module.main(["--logdir", str(tmp_path / "tb"), "--models", "bprmf", "--runs" if script != "epoch_time" else "--jsonl", str(runs)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{script}.py: error: --logdir" in err and "pip install 'mirrorgrad-jax[tensorboard]'" in err, err
    assert not (tmp_path / "tb").exists() and not runs.exists()


def test_patience_sweep_with_a_missing_notes_file_stops_in_one_line_before_it_runs(tmp_path, capsys):
    sweep = _load("patience_sweep")
    runs, out = tmp_path / "runs.jsonl", tmp_path / "sweep.md"
    with pytest.raises(SystemExit) as stop:
        sweep.main(["--models", "bprmf", "--datasets", "synthetic-small", "--runs", str(runs), "--out", str(out), "--notes", str(tmp_path / "notes.md")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err == f"patience_sweep.py: error: --notes {tmp_path / 'notes.md'}: no such file", err
    assert not runs.exists() and not out.exists()


def test_flat_minima_says_when_runs_were_still_improving_at_the_end_of_their_window():
    fm = _load("flat_minima")
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    peaked = [0.1, 0.6, 0.5, 0.4, 0.3, 0.2]
    settled = [_fm_row(m, k, s, peaked, peaked) for m, k in (("plain", None), ("sam", 0.01), ("sam", 0.05), ("sam", 0.1)) for s in (999, 1000)]
    table = "\n".join(fm.cell_table(settled, "bprmf", "d", 3))
    assert "Still improving" not in table and "| 1 of 3 |" in table
    # Plain still rising over its whole 6 epochs: late both within 3 (equal epochs) and 6 (equal compute).
    climbing = [_fm_row("plain", None, s, rising, rising) for s in (999, 1000)] + settled[2:]
    table = "\n".join(fm.cell_table(climbing, "bprmf", "d", 3))
    assert "**Still improving at the end of the window**" in table and "plain within 3 (2 of 2), plain within 6 (2 of 2)" in table
    assert "sam within" not in table and "| 2 of 3 |" in table
    assert fm.late_runs({999: _fm_row("sam", 0.1, 999, rising, rising)}, 3) == [999]
    assert fm.late_runs({999: _fm_row("sam", 0.1, 999, peaked, peaked)}, 3) == []


def _fm_ablation_row(alpha1, alpha2, beta, seed, valid, test, budget=3, **extra):
    """A row as ``flat_minima.py --ablation`` writes it: MG trained 2 x budget epochs, its knobs in their own fields."""
    row = _fm_row("mg", None, seed, valid, test, budget=budget)
    row.update(study="ablation", alpha1=alpha1, alpha2=alpha2, beta=beta, **extra)
    return row


def test_flat_minima_ablation_grid_runs_every_arm_once_first_seed_first():
    fm = _load("flat_minima")
    todo = fm.ablation_pending([], ["bprmf"], ["d"], 2, 3, ("alpha2", "beta", "alpha1"))
    got = [(method, None if knob is None else tuple(knob), seed) for model, dataset, method, knob, seed in todo]
    # The grid, written out: alpha2 at alpha1 1 and beta 3; beta at alpha1 1 and alpha2 0.2, whose beta 3
    # is the alpha2 axis's 0.2 arm (one run, not two). alpha1 waits for the alpha2 axis's choice.
    arms = {(1.0, a, 3) for a in (0.05, 0.1, 0.2, 0.3, 0.5)} | {(1.0, 0.2, b) for b in (1, 2, 3, 5, 10)}
    assert len(arms) == 9
    assert len(got) == len(set(got)) == 2 * (1 + 9)
    assert set(got) == {("plain", None, s) for s in (999, 1000)} | {("mg", arm, s) for arm in arms for s in (999, 1000)}
    assert got[0] == ("plain", None, 999) and [s for *_, s in got] == sorted(s for *_, s in got)
    # Naming alpha1 alone still trains the alpha2 axis, on the first seed only (its choice needs them).
    alone = [(t[2], t[3], t[4]) for t in fm.ablation_pending([], ["bprmf"], ["d"], 2, 3, ("alpha1",))]
    assert sorted(alone, key=str) == sorted(
        [("plain", None, 999), ("plain", None, 1000)] + [("mg", (1.0, a, 3), 999) for a in (0.05, 0.1, 0.2, 0.3, 0.5)], key=str
    )
    mg, _ = fm.configs("mg", fm.Arm(2.0, 0.5, 1))
    assert (mg.enabled, mg.alpha1, mg.alpha2, mg.beta) == (True, 2.0, 0.5, 1)


def test_flat_minima_ablation_resumes_and_reuses_the_comparisons_runs(tmp_path):
    fm = _load("flat_minima")
    path = str(tmp_path / "runs.jsonl")
    flat, rising = [0.3] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    fm.append_run(path, _fm_row("plain", None, 999, flat, flat))  # the comparison's plain run: the reference
    for alpha2 in (0.1, 0.2, 0.3):  # the comparison's MG runs are the arms alpha1 1, beta 3 at its alpha2 values
        fm.append_run(path, _fm_row("mg", alpha2, 999, flat, flat))
    fm.append_run(path, _fm_ablation_row(1.0, 0.2, 5, 999, flat, flat))
    fm.append_run(path, _fm_ablation_row(1.0, 0.05, 3, 999, flat, flat, budget=4))  # another budget: another grid
    fm.append_run(path, _fm_ablation_row(1.0, 0.1, 10, 999, rising, rising))  # would win the comparison's choice if it were read as its own
    done = fm.read_runs(path)
    todo = fm.ablation_pending(done, ["bprmf"], ["d"], 1, 3, ("alpha2", "beta"))
    assert sorted((t[2], t[3]) for t in todo) == sorted(
        [("mg", (1.0, 0.05, 3)), ("mg", (1.0, 0.5, 3))] + [("mg", (1.0, 0.2, b)) for b in (1, 2, 10)]
    )
    # ... and the comparison reads its rows as before: the ablation's are not its own.
    comparison = [r for r in done if "study" not in r]
    assert fm.pending_runs(done, ["bprmf"], ["d"], 2, 3) == fm.pending_runs(comparison, ["bprmf"], ["d"], 2, 3)
    assert fm.chosen_knobs(done, "bprmf", "d", 3)["mg"] == fm.chosen_knobs(comparison, "bprmf", "d", 3)["mg"] == 0.1
    assert fm.cell_rows(done, "bprmf", "d", 3) == fm.cell_rows(comparison, "bprmf", "d", 3)


def test_flat_minima_ablation_alpha1_axis_uses_the_alpha2_chosen_on_the_first_seeds_validation():
    fm = _load("flat_minima")
    low, high = [0.1] * 6, [0.5] * 6
    late_peak = [0.2, 0.2, 0.2, 0.2, 0.2, 0.7]  # best only in epoch 5: inside MG's 2 x 3 epochs, outside the first 3

    def rows_choosing(best):
        rows = [_fm_row("plain", None, s, low, low) for s in (999, 1000)]
        for a in (0.05, 0.1, 0.2, 0.3, 0.5):
            # best: highest on validation; 0.1: highest on test (not what chooses); 0.05 ties 0.2 below the best
            rows.append(_fm_ablation_row(1.0, a, 3, 999, late_peak if a == best else [0.3] * 6, high if a == 0.1 else low))
        rows.append(_fm_ablation_row(1.0, 0.05, 3, 1000, [0.9] * 6, high))  # another seed does not choose
        return rows

    rows = rows_choosing(0.3)
    assert fm.chosen_alpha2(fm.ablation_runs(rows, "bprmf", "d", 3)) == 0.3
    todo = fm.ablation_pending(rows, ["bprmf"], ["d"], 2, 3, ("alpha1",))
    # alpha1 0.5 and 2 on both seeds; alpha1 1 is the alpha2 axis's 0.3 arm, already run on seed 999
    assert sorted(t[3] for t in todo) == [(0.5, 0.3, 3), (0.5, 0.3, 3), (1.0, 0.3, 3), (2.0, 0.3, 3), (2.0, 0.3, 3)]
    # Chosen 0.5: alpha1 0.5 <= alpha2 0.5 is not run, and the table says why.
    rows = rows_choosing(0.5)
    runs = fm.ablation_runs(rows, "bprmf", "d", 3)
    assert [t[3] for t in fm.ablation_pending(rows, ["bprmf"], ["d"], 1, 3, ("alpha1",))] == [(2.0, 0.5, 3)]
    table = "\n".join(fm.ablation_table(runs, ("alpha1",)))
    assert "| alpha1 | 0.5 | - | - | - | 0 | not run: alpha1 0.5 <= alpha2 0.5" in table
    # Every alpha2 tied on validation: the smallest.
    tied = [_fm_ablation_row(1.0, a, 3, 999, [0.3] * 6, [0.3] * 6) for a in (0.5, 0.3, 0.2, 0.1, 0.05)]
    assert fm.chosen_alpha2(fm.ablation_runs(tied, "bprmf", "d", 3)) == 0.05
    assert fm.chosen_alpha2(fm.ablation_runs(tied[:4], "bprmf", "d", 3)) is None  # 0.05 not run yet: no choice


def test_flat_minima_ablation_penalty_and_rank_correlation_by_hand():
    fm = _load("flat_minima")
    assert fm.implicit_penalty(1.0, 0.2, 1e-3) == pytest.approx(1.25e-4)  # 1 * 0.2 * 1e-3 / (2 * 0.8)
    assert fm.implicit_penalty(2.0, 0.5, 1e-3) == pytest.approx(1e-3 / 3)  # 2 * 0.5 * 1e-3 / (2 * 1.5)
    assert fm.implicit_penalty(0.5, 0.2, 0.01) == pytest.approx(1 / 600)  # 0.5 * 0.2 * 0.01 / (2 * 0.3)
    for alpha1 in (0.5, 0.3):
        with pytest.raises(ValueError, match="alpha1 > alpha2"):
            fm.implicit_penalty(alpha1, 0.5, 1e-3)
    assert fm.spearman([1.0, 2.0, 3.0], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert fm.spearman([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 7.0, 7.0]) == pytest.approx(2 / 5**0.5)  # tied ranks 1.5, 3.5
    assert fm.spearman([1.0, 2.0], [1.0, 2.0]) is None and fm.spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) is None
    # The table takes each arm's learning rate from its rows (1e-3 for rows from before it was recorded).
    flat = [0.3] * 6
    rows = [_fm_row("plain", None, 999, flat, flat), _fm_row("mg", 0.1, 999, flat, flat)]
    rows.append(_fm_ablation_row(1.0, 0.2, 3, 999, flat, flat, learning_rate=0.01))
    table = "\n".join(fm.ablation_table(fm.ablation_runs(rows, "bprmf", "d", 3), ("alpha2",)))
    assert "| alpha2 | 1 | 0.1 | 3 | 5.56e-05 | 1 |" in table  # 0.1e-3 / 1.8
    assert "| alpha2 | 1 | 0.2 | 3 | 1.25e-03 | 1 |" in table  # 0.2 * 0.01 / 1.6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ablation", "beta,gamma"], "--ablation: unknown axis 'gamma' (choose from alpha2, beta, alpha1, comma-separated)"),
        (["--ablation", ","], "--ablation: name at least one axis"),
        (["--ablation", "beta", "--timing"], "--ablation: times the comparison's methods; leave out --timing"),
        (["--timing", "--datasets", "baby-graph", "--graph", "no-such-folder"], "--datasets baby-graph: no baby.inter in no-such-folder"),
        (["--models", "bprmf,nosuch"], "--models: unknown model 'nosuch'; available: bm3, bprmf"),
        (["--timing", "--models", "nosuch"], "--models: unknown model 'nosuch'"),
        (["--datasets", "synthetic,nosuch"], "--datasets: unknown dataset 'nosuch' (a name among"),
        (["--interleave"], "--interleave is a way of --timing: give --timing too"),
        (["--timing", "--interleave", "--rounds", "2"], "--interleave runs one epoch of each method in turn: it takes --epochs, not --rounds"),
    ],
)
def test_flat_minima_ablation_mistakes_stop_in_one_line_before_anything_runs(args, message, tmp_path, capsys):
    fm = _load("flat_minima")
    runs = tmp_path / "runs.jsonl"
    with pytest.raises(SystemExit) as stop:
        fm.main(["--models", "bprmf", *args, "--runs", str(runs), "--out", str(tmp_path / "out.md")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("flat_minima.py: error: ") and message in err, err
    assert not runs.exists() and not (tmp_path / "out.md").exists()


def test_flat_minima_ideal_cost_counts_the_mirror_batches_of_an_epoch_by_hand():
    fm = _load("flat_minima")
    # batches 0, 3, 6, ... of an epoch mirror: 58 batches -> 20 mirrored; 6 -> 2; 7 -> 3; 1 -> 1
    assert fm.ideal_cost("mg", 58) == pytest.approx(1 + 20 / 58, rel=1e-12)
    assert fm.ideal_cost("mg", 6) == pytest.approx(4 / 3, rel=1e-12)
    assert fm.ideal_cost("mg", 7) == pytest.approx(1 + 3 / 7, rel=1e-12)
    assert fm.ideal_cost("mg", 1) == 2.0
    assert [fm.ideal_cost(m, 58) for m in ("plain", "sam", "asam", "gnp")] == [1.0, 2.0, 2.0, 2.0]


def test_flat_minima_timing_on_a_baby_graph_folder_writes_every_method_against_its_ideal(tmp_path, capsys):
    """``--timing --datasets baby-graph --graph DIR`` as the Usage shows it, on a tiny hand-made ``baby.inter``."""
    fm = _load("flat_minima")
    graph = _tiny_baby_graph(tmp_path / "graph")
    out = tmp_path / "timing.md"
    fm.main(["--timing", "--models", "bprmf", "--datasets", "baby-graph", "--graph", str(graph),
             "--epochs", "2", "--rounds", "1", "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert "## Epoch time side by side: bprmf on baby-graph" in text
    assert "1 batches of 2048 an epoch" in text and "mirrors 1 of them" in text  # 120 train rows: one batch
    table = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert set(table) == {"method", "plain", "mg", "sam", "asam", "gnp"}
    # one batch, and it mirrors: MG's ideal is two gradient evaluations, as the two-pass methods'
    assert {m: table[m][3] for m in ("plain", "mg", "sam", "asam", "gnp")} == {
        "plain": "1.00", "mg": "2.00", "sam": "2.00", "asam": "2.00", "gnp": "2.00"}  # fmt: skip
    for method in ("mg", "sam", "asam", "gnp"):
        seconds, ratio, ideal, over = (float(x) for x in table[method][1:])
        # ratio and ratio / ideal are each rounded to 2 decimals (0.005), and ideal >= 1
        assert seconds > 0 and over == pytest.approx(ratio / ideal, abs=0.0101)
    assert text.strip() in capsys.readouterr().out


def test_flat_minima_interleaved_timing_times_every_method_on_the_same_batches(tmp_path, capsys, monkeypatch):
    """``--timing --interleave`` as the Usage shows it, on a graph of three batches: one epoch of each
    method in turn, the order reversed every other epoch, every method on the epoch's batches, key and
    batch index, the first epoch (compilation) left out of the times."""
    fm = _load("flat_minima")
    from mirrorgrad_jax.train.engine import EpochEngine

    calls = []
    run_epoch = EpochEngine.run_epoch

    def recorded(self, params, opt_state, full, last, key, global_batch, steps_per_epoch):
        drawn = tuple(None if b is None else np.asarray(b).tobytes() for b in (full, last))
        calls.append(((id(self), self.mg.enabled), (drawn, np.asarray(jax.random.key_data(key)).tobytes(), global_batch, steps_per_epoch)))
        return run_epoch(self, params, opt_state, full, last, key, global_batch, steps_per_epoch)

    monkeypatch.setattr(EpochEngine, "run_epoch", recorded)
    graph = tmp_path / "graph"
    graph.mkdir()  # 300 users x 200 items, 20 train rows each: 6,000 rows, 3 batches of 2048 (the last short)
    rows = [(u, (7 * u + 3 * k) % 200, 0) for u in range(300) for k in range(20)] + [(u, (7 * u + 61 + x) % 200, 1 + x) for u in range(300) for x in (0, 1)]
    (graph / "baby.inter").write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    out = tmp_path / "timing.md"
    fm.main(["--timing", "--interleave", "--models", "bprmf", "--datasets", "baby-graph", "--graph", str(graph), "--epochs", "3", "--out", str(out)])
    text = out.read_text()
    assert "## Epoch time side by side, interleaved: bprmf on baby-graph" in text
    # the count of timed epochs is that of the times collected: epoch 0 of 3 left out
    assert "3 batches of 2048 an epoch; 2 timed epochs (of 3) per method, one epoch of each method in turn" in text
    table = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert set(table) == {"method", "plain", "mg", "sam", "asam", "gnp"}
    assert table["mg"][4] == f"{1 + 1 / 3:.2f}"  # batches 0 of 3 mirror: one of three
    for method in ("mg", "sam", "asam", "gnp"):
        ratio, ideal, over = (float(table[method][i]) for i in (3, 4, 5))
        assert over == pytest.approx(ratio / ideal, abs=0.0101)  # each cell rounded to 2 places
    assert len(calls) == 15  # 5 methods x 3 epochs
    epochs = [calls[i : i + 5] for i in range(0, 15, 5)]
    for index, epoch in enumerate(epochs):
        (drawn, _key, start, steps), *others = {inputs for _, inputs in epoch}
        assert not others and start == index * 3 and steps == 3 and drawn[0] is not None  # a scan of full batches ran
    assert len({inputs[:2] for epoch in epochs for _, inputs in epoch}) == 3  # a new draw and key each epoch
    engines = [engine for engine, _ in epochs[0]]
    assert len(set(engines)) == 5 and [mg for _, mg in engines] == [False, True, False, False, False]  # plain, mg, sam, asam, gnp
    assert [engine for engine, _ in epochs[1]] == engines[::-1] and [engine for engine, _ in epochs[2]] == engines
    assert text.strip() in capsys.readouterr().out


def test_flat_minima_ablation_summary_and_figure_are_written(tmp_path):
    fm = _load("flat_minima")
    path = str(tmp_path / "runs.jsonl")
    flat, rising = [0.3] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for seed, test in ((999, 0.30), (1000, 0.28)):
        fm.append_run(path, _fm_row("plain", None, seed, flat, [test] * 6))
        # beta 5: best validation in epoch 5, whose test is 0.02 and 0.04 above plain's
        fm.append_run(path, _fm_ablation_row(1.0, 0.2, 5, seed, rising, [0.0] * 5 + [test + 0.02 * (seed - 998)]))
        fm.append_run(path, _fm_ablation_row(1.0, 0.2, 3, seed, flat, [test - 0.01] * 6))
    out = tmp_path / "report" / "flat_minima.md"
    out.parent.mkdir()
    fm.main(["--summarise-only", "--models", "bprmf", "--datasets", "d", "--budget", "3", "--runs", path, "--out", str(out)])
    text = out.read_text()
    assert "\n## bprmf on d\n" not in text  # the comparison has nothing here but the plain runs it shares
    section = text[text.index("## MG ablations"):]
    assert "### bprmf on d" in section and "- implicit penalty: " in section
    assert "| plain (reference) | - | - | - | 0 | 2 | 0.2900 ± 0.0141 | - | 0, 0 of 6 |" in section
    beta5 = [line for line in section.splitlines() if line.startswith("| beta | 1 | 0.2 | 5 |")]
    assert beta5 == ["| beta | 1 | 0.2 | 5 | 1.25e-04 | 2 | 0.3200 ± 0.0000 | +0.0300 ± 0.0141 (2/2) | 5, 5 of 6 |"]
    assert "| beta | 1 | 0.2 | 3 | 1.25e-04 | 2 | 0.2800 ± 0.0141 | -0.0100 ± 0.0000 (0/2) | 0, 0 of 6 |" in section
    assert "alpha2 | 1 | 0.05" not in section  # the alpha2 axis has no run of its own: only the beta axis is shown
    assert "Still improving at the end of the budget** (best validation epoch in its last 5%): alpha1 1 alpha2 0.2 beta 5 (2 of 2)" in section
    figure = tmp_path / "report" / "figures" / "flat_minima_ablation_bprmf_d.png"
    assert "Figure: `figures/flat_minima_ablation_bprmf_d.png`" in section
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A --timing section appended to the summary survives the summary's rewrite (the runs file
    # does not hold timings, so a rewrite could not make it again); the rewrite is the same text.
    timing = "## Epoch time side by side: bprmf on d\n\n| method | median epoch (s) |\n|---|---|\n| plain | 0.05 |\n"
    out.write_text(text + "\n" + timing)
    fm.main(["--summarise-only", "--models", "bprmf", "--datasets", "d", "--budget", "3", "--runs", path, "--out", str(out)])
    again = out.read_text()
    assert again.endswith("\n\n" + timing) and again.count("## Epoch time side by side") == 1
    strip_date = lambda t: [line for line in t.splitlines() if not line.startswith("Date: ")]  # noqa: E731
    assert strip_date(again[: -len(timing)].rstrip("\n")) == strip_date(text.rstrip("\n"))


def test_flat_minima_selection_curve_is_the_none_selection_of_every_prefix():
    """Entry t - 1 equals ``selection(row, t)``: ties (by 4 decimals) keep the earlier epoch, as the trainer."""
    fm = _load("flat_minima")
    valid = [0.1, 0.3, 0.30004, 0.2, 0.5, 0.5]  # 0.30004 rounds to 0.3: not an improvement
    test = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    row = _fm_row("plain", None, 999, valid, test)
    assert fm.selection_curve(row) == [0.01, 0.02, 0.02, 0.02, 0.05, 0.05]
    assert fm.selection_curve(row) == [fm.selection(row, t).test["recall@20"] for t in range(1, 7)]


def test_flat_minima_summary_draws_each_comparison_cell(tmp_path):
    """A cell with a method beside plain gets its figure, named under its table; a plain-only cell none."""
    fm = _load("flat_minima")
    path = str(tmp_path / "runs.jsonl")
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for seed in (999, 1000):
        fm.append_run(path, _fm_row("plain", None, seed, rising, rising))
        fm.append_run(path, {**_fm_row("plain", None, seed, rising, rising), "dataset": "e"})  # plain only: no figure
        for rho in (0.01, 0.05, 0.1) if seed == 999 else (0.01,):
            fm.append_run(path, _fm_row("sam", rho, seed, rising, [x - 0.05 for x in rising]))
    out = tmp_path / "report" / "flat_minima.md"
    out.parent.mkdir()
    fm.main(["--summarise-only", "--models", "bprmf", "--datasets", "d,e", "--budget", "3", "--runs", path, "--out", str(out)])
    text = out.read_text()
    cell = text[text.index("## bprmf on d"):]
    assert cell.index("| sam | rho 0.01 | 2 |") < cell.index("Figure: `figures/flat_minima_bprmf_d.png`")
    assert (tmp_path / "report" / "figures" / "flat_minima_bprmf_d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "report" / "figures" / "flat_minima_bprmf_e.png").exists()


def test_flat_minima_ablation_run_writes_its_knobs_and_learning_rate():
    """One real training run, 2 epochs of BPR-MF on synthetic-small at beta 1 (every batch mirrors)."""
    fm = _load("flat_minima")
    row = fm.run_one("bprmf", "synthetic-small", "mg", fm.Arm(2.0, 0.5, 1), 999, 1)
    assert (row["study"], row["alpha1"], row["alpha2"], row["beta"], row["knob"], row["method"]) == ("ablation", 2.0, 0.5, 1, None, "mg")
    assert (row["epochs"], row["learning_rate"], row["optimizer"]) == (2, 1e-3, "adam")
    assert len(row["curves"]["valid"]["recall@20"]) == 2
    assert not fm.is_comparison(row) and fm.is_comparison(_fm_row("mg", 0.2, 999, [0.3] * 6, [0.3] * 6))
    assert set(fm.ablation_runs([json.loads(json.dumps(row))], "bprmf", "synthetic-small", 1)) == {(2.0, 0.5, 1)}


def test_flat_minima_progress_line_reads_plain_over_the_window_its_study_compares(tmp_path, monkeypatch, capsys):
    """Plain peaks at epoch 1 within the budget (3) and at epoch 5 over its whole 6 epochs: the
    comparison's line shows equal epochs (the first 3), the ablation's the whole run, as its summary reads it."""
    fm = _load("flat_minima")
    valid = [0.1, 0.5, 0.2, 0.3, 0.4, 0.6]
    monkeypatch.setattr(fm, "run_one", lambda model, dataset, method, knob, seed, budget: _fm_row(method, knob, seed, valid, valid, budget))
    for axes, window, best in (((), 3, 1), (("beta",), 6, 5)):
        args = argparse.Namespace(stop_after=None, runs=tmp_path / f"runs{len(axes)}.jsonl", budget=3, ablation_axes=axes)
        fm.run_pending([("bprmf", "d", "plain", None, 999)], args, time.perf_counter())
        line = capsys.readouterr().err.strip()
        assert f"best valid epoch {best} of the first {window}, test recall@20 {valid[best]:.4f}" in line, line


def test_results_readme_indexes_every_committed_result_file():
    """benchmarks/results/README.md names every result file (what it answers and how it is made)."""
    folder = os.path.join(ROOT, "benchmarks", "results")
    index = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)) and f != "README.md"]
    assert len(files) > 20  # the folder is really read
    assert [f for f in sorted(files) if f"`{f}`" not in index] == []


@pytest.mark.parametrize("argv", [["--splits", "--models", ""], ["--splits", "--graph", "/nonexistent/baby-graph"]])
def test_ranking_splits_needs_models_and_the_graph(argv, tmp_path, capsys):
    ranking = _load("ranking")
    out = tmp_path / "report.md"
    with pytest.raises(SystemExit) as exit_info:
        ranking.main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--splits needs --models and the Baby graph" in capsys.readouterr().err
    assert not out.exists()


def _tiny_baby_graph(folder):
    """A hand-made ``baby.inter`` (30 users x 30 items, 120 train rows) in ``folder``."""
    folder.mkdir()
    rows = [(u, (u + k) % 30, 0) for u in range(30) for k in range(4)] + [(u, (u + 5 + x) % 30, 1 + x) for u in range(30) for x in (0, 1)]
    (folder / "baby.inter").write_text("userID\titemID\tx_label\n" + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows))
    return folder


def test_topk_selection_times_both_parts_and_checks_every_variant_equal(tmp_path, capsys):
    """As the Usage shows it, on small rows and a tiny hand-made Baby graph.

    The selection part's 700 items take the block path; the tiny graph's 30 items do not (under
    4 k blocks), so its DA-MRS part checks the plumbing only. The pseudo-labels on the block
    path are checked against stable argsorts in test_model_damrs.py.
    """
    ts = _load("topk_selection")
    graph = _tiny_baby_graph(tmp_path / "graph")
    out = tmp_path / "topk.md"
    ts.main(["--rows", "16", "--items", "700", "--blocks", "8,16", "--repeats", "1", "--graph", str(graph), "--out", str(out)])
    text = out.read_text()
    tables = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row[0] for row in tables]
    assert names.count("lax.top_k") == 2 and names.count("top_k_positions, blocks of 16") == 2  # in memory, fused
    assert {"both lax.top_k (before)", "as shipped", "both top_k_positions"} <= set(names)
    ratios = {row[0]: float(row[2]) for row in tables if row[0] in ("lax.top_k", "both lax.top_k (before)")}
    assert ratios == {"lax.top_k": 1.0, "both lax.top_k (before)": 1.0}  # each table's reference is 1.00
    assert "120 pairs of the Baby graph, 30 users x 30 items; losses and gradients bit-equal" in text
    assert "--graph " + str(graph) in text and text.strip() in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--parts", "selection,sorting"], "--parts takes selection, damrs; got 'selection,sorting'"),
        (["--parts", "selection", "--blocks", "8,x"], "--blocks takes comma-separated whole numbers"),
        (["--parts", "selection", "--k", "0"], "--k between 1 and --items"),
        (["--parts", "damrs", "--graph", "no-such-folder"], "no baby.inter in no-such-folder"),
    ],
)
def test_topk_selection_mistakes_stop_in_one_line(args, message, tmp_path, capsys):
    ts = _load("topk_selection")
    out = tmp_path / "topk.md"
    with pytest.raises(SystemExit) as stop:
        ts.main([*args, "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_subnormals_counts_every_array_once_and_xla_cpu_flushes_subnormals_to_zero():
    """``y = jit(x * 1e-20)`` then ``y * 1e-20`` on host values [1e-40, 2e-40, 0, 1], by hand.

    The input keeps its two subnormals (numpy made them). XLA's CPU backend computes with
    subnormals flushed to zero, on input and output, so the first product is [0, 0, 0, 1e-20]
    (three zeros) and the second [0, 0, 0, 0] (1e-40 flushed). That flushing is what
    ``subnormals.md``'s reading rests on: a backend that kept subnormals fails here. The
    call's output is counted inside it, once.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    sub = _load("subnormals")
    inner = jax.jit(lambda y: y * jnp.float32(1e-20))
    x = jnp.asarray(np.array([1e-40, 2e-40, 0.0, 1.0], np.float32))
    counts, outs = sub.count_values(lambda v: inner(v) * jnp.float32(1e-20), x)
    assert counts["the parameters"] == [4, 1, 2, 1]  # values, zeros, subnormals, arrays
    assert counts["every array the program produces"] == [8, 7, 0, 2]
    assert counts["the gradient"] == [4, 4, 0, 1]
    assert float(jnp.sum(jnp.abs(outs[0]))) == 0.0
    # The graph models' sparse product too reads subnormal inputs as zero: no slow path to take.
    from mirrorgrad_jax.graph import CooAdjacency
    from mirrorgrad_jax.graph.propagation import propagate

    adj = CooAdjacency(jnp.asarray([0, 0, 1], jnp.int32), jnp.asarray([0, 1, 1], jnp.int32), jnp.ones(3, jnp.float32), 2)
    tiny = jnp.asarray(np.full((2, 3), 1e-39, np.float32))
    assert float(tiny[0, 0]) > 0 and not np.any(np.asarray(propagate(adj, tiny)))


def test_subnormals_censuses_lightgcn_at_both_ascent_points_as_its_usage_shows(tmp_path, capsys):
    """On a tiny hand-made Baby graph: one row per point and kind, the sparse products among them."""
    sub = _load("subnormals")
    graph = _tiny_baby_graph(tmp_path / "graph")
    out = tmp_path / "census.md"
    sub.main(["--model", "lightgcn", "--points", "sam:0.5,asam:0.5", "--graph", str(graph), "--out", str(out)])
    text = out.read_text()
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0] for r in rows[::5]] == ["w (no ascent)", "SAM rho 0.5", "ASAM rho 0.5"]
    kinds = ["the parameters", "every array the program produces", "sparse products: dense operand", "sparse products: output", "the gradient"]
    assert [r[2] for r in rows[:5]] == kinds and len(rows) == 15
    distance = {r[0]: float(r[1]) for r in rows}
    assert distance["w (no ascent)"] == 0 and distance["SAM rho 0.5"] == pytest.approx(0.5, rel=1e-3)  # SAM moves rho exactly
    assert 0 < distance["ASAM rho 0.5"] < 0.5  # its step scales with |w| + eta, small here
    assert "at the initial parameters" in text and text.strip() in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points", "sam:0"], "--points takes method:radius pairs"),
        (["--points", "gnp:0.5"], "--points takes method:radius pairs"),
        (["--method-options", "rho=0.5"], "--method-options needs --method sam, asam or gnp"),
        (["--epochs", "-1"], "--epochs must be 0 or more"),
        (["--graph", "no-such-folder"], "the Baby graph is not at no-such-folder"),
    ],
)
def test_subnormals_mistakes_stop_in_one_line(args, message, tmp_path, capsys):
    sub = _load("subnormals")
    out = tmp_path / "census.md"
    with pytest.raises(SystemExit) as stop:
        sub.main(["--model", "lightgcn", *args, "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_shifts_paired_differences_a_committed_report_run_by_run(capsys, tmp_path):
    """As its Usage shows, on a committed report; the cells recomputed here with numpy from the
    report's per-run numbers (three runs, two perturbation seeds each, run by run)."""
    paired = _load("shifts_paired")
    path = os.path.join(ROOT, "benchmarks", "results", "shifts_extreme_vbpr_movielens-100k.json")
    assert paired.main([path]) == 0
    out = capsys.readouterr().out
    numbers = json.load(open(path))["numbers"]
    diffs = (np.asarray(numbers["SAM"]["noise 1"]) - np.asarray(numbers["plain"]["noise 1"])).reshape(3, 2).mean(axis=1)
    header, _, *rows = [line for line in out.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    cells = dict(zip(split(header), split(next(r for r in rows if r.startswith("| SAM - plain |")))))
    assert cells["noise 1"] == f"{diffs.mean():+.4f} ± {diffs.std(ddof=1):.4f} ({int((diffs > 0).sum())}/3)", cells
    assert [r.split(" | ")[0] for r in rows] == ["| MG - plain", "| SAM - plain", "| ASAM - plain", "| GNP - plain"]
    # A retention whose clean metric was 0 is NaN, written as null: left out of its cell, not an error.
    report = json.load(open(path))
    report["numbers"]["plain"]["noise 1"][0] = None
    with_null = tmp_path / "null.json"
    with_null.write_text(json.dumps(report))
    assert paired.main([str(with_null)]) == 0
    out = capsys.readouterr().out
    header, _, *rows = [line for line in out.splitlines() if line.startswith("|")]
    cells = dict(zip(split(header), split(next(r for r in rows if r.startswith("| SAM - plain |")))))
    assert cells["noise 1"].endswith("(3/3)") and cells["noise 1"] != "n/a", cells  # seed 999 keeps its second perturbation seed
    # A file that is not a report: one line, status 2.
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert paired.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"shifts_paired.py: error: {bad}: KeyError"), err
