"""The side-by-side harness's bookkeeping: medians, ratios, goals and the report (no torch here).

``benchmarks/vs_reference.py`` needs a reference checkout and torch to run; what it does
with the measured epochs is pure and checked here on made-up numbers, as are the shims it
applies to NumPy / SciPy (on copies of the modules' attributes, restored afterwards).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vs():
    benchmarks = os.path.join(ROOT, "benchmarks")
    if benchmarks not in sys.path:  # as when run as a script: the script imports benchmarks/reporting.py
        sys.path.append(benchmarks)
    spec = importlib.util.spec_from_file_location("bench_vs_reference", os.path.join(benchmarks, "vs_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _epochs(first, steady, eval_s, cpu_factor=None):
    out = []
    for i, t in enumerate([first] + steady):
        e = {"epoch": i, "train_s": t, "eval_s": eval_s}
        if cpu_factor:
            e.update(train_cpu_s=cpu_factor * t, eval_cpu_s=cpu_factor * eval_s)
        out.append(e)
    return out


def _run(model="bm3", cpu=True):
    f = 2.0 if cpu else None
    return {
        "model": model,
        "epochs": {
            "ref plain": _epochs(20.0, [18.0, 17.0, 19.0], 2.8, f),
            "ref MG": _epochs(25.0, [22.0, 23.0, 24.0], 2.8, f),
            "ours plain": _epochs(9.0, [5.0, 5.5, 4.5], 0.6, f),
            "ours MG": _epochs(12.0, [6.5, 6.6, 6.4], 0.7, f),
        },
    }


META = {
    "command": "python benchmarks/vs_reference.py --reference /tmp/mgref",
    "date": "2026-11-29 10:00, 40 min",
    "machine": "x86_64, 2 CPU cores",
    "reference": "Qrange-group/Mirror-Gradient @ abc1234, torch 2.13.0",
    "ours": "jax 0.10.2",
    "threads": "torch intra-op 2",
    "noise": "load average 0.10 before, 0.20 after",
    "data": "Baby graph",
}


def test_summary_takes_medians_after_the_first_epoch_and_ratios(vs):
    s = vs.summarize(_run())
    assert s["ref_plain_epoch"] == 18.0 and s["ours_plain_epoch"] == 5.0
    assert s["ref_mg_epoch"] == 23.0 and s["ours_mg_epoch"] == 6.5
    assert s["ref_plain_first"] == 20.0 and s["ours_mg_first"] == 12.0
    assert s["ratio_plain"] == pytest.approx(5.0 / 18.0)
    assert s["ratio_mg"] == pytest.approx(6.5 / 23.0)
    assert s["ours_mg_overhead"] == pytest.approx(1.3)
    # eval: the median over both arms' timed epochs (0.6, 0.6, 0.6, 0.7, 0.7, 0.7)
    assert s["ours_eval"] == pytest.approx(0.65) and s["ref_eval"] == pytest.approx(2.8)
    assert s["ours_plain_spread"] == pytest.approx(1.0 / 5.0)
    assert s["cpu_ratio_plain"] == pytest.approx(5.0 / 18.0)


def test_goals_use_the_per_model_bounds(vs):
    bm3 = vs.summarize(_run("bm3"))["goals"]
    vbpr = vs.summarize(_run("vbpr"))["goals"]
    assert bm3["epoch plain"] == (pytest.approx(5.0 / 18.0), 0.33, True)
    assert vbpr["epoch plain"][1] == 0.40
    assert bm3["eval"] == (pytest.approx(0.65 / 2.8), 0.25, True)
    assert bm3["MG / plain"] == (pytest.approx(1.3), 1.36, True)


def test_report_has_header_tables_and_goal_verdicts(vs):
    text = vs.render([vs.summarize(_run("vbpr")), vs.summarize(_run("bm3"))], META)
    for key in ("Command:", "Date:", "Machine:", "Reference:", "This project:", "Threads:", "Noise:", "Data:"):
        assert key in text
    lines = text.splitlines()
    wall = [l for l in lines if l.startswith("| vbpr | 18.00 / 23.00 |")]
    assert wall == ["| vbpr | 18.00 / 23.00 | 5.00 / 6.50 | 0.28 / 0.28 | 1.28, 1.30 | 2.80, 0.650 | 0.23 |"]
    cpu = [l for l in lines if l.startswith("| vbpr | 36.00 / 46.00 |")]
    assert len(cpu) == 1
    verdicts = [l for l in lines if l.startswith("| bm3 | 0.28 <= 0.33 met")]
    assert verdicts == ["| bm3 | 0.28 <= 0.33 met | 0.28 <= 0.33 met | 0.23 <= 0.25 met | 1.30 <= 1.36 met |"]
    assert sum(1 for l in lines if l.startswith("| bm3 | ")) == 3 + 4  # wall, cpu, goals + four arms


def test_report_without_cpu_times_has_no_cpu_table(vs):
    text = vs.render([vs.summarize(_run(cpu=False))], META)
    assert "process CPU time" not in text
    missed = vs.summarize(_run(cpu=False))
    missed["goals"]["eval"] = (0.31, 0.25, False)
    assert "0.31 > 0.25 MISSED" in vs.render([missed], META)


def test_reference_log_lines_are_parsed(vs):
    assert vs._REF_TRAIN.search("epoch 3 training [time: 17.86s, train loss: 40.2]").groups() == ("3", "17.86")
    assert vs._REF_EVAL.search("epoch 3 evaluating [time: 2.71s, valid_score: 0.0123]").groups() == ("3", "2.71")


def test_shims_restore_numpy_aliases_and_dok_update(vs, monkeypatch):
    np = pytest.importorskip("numpy")
    sp = pytest.importorskip("scipy.sparse")
    # setattr first so that the undo also removes what the shims add.
    for alias in ("float", "int", "bool", "object"):
        monkeypatch.setitem(np.__dict__, alias, None)
        monkeypatch.delitem(np.__dict__, alias)
    monkeypatch.setattr(sp.dok_matrix, "_update", None, raising=False)
    monkeypatch.delattr(sp.dok_matrix, "_update")
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "lmdb", "PIL", "PIL.Image", "matplotlib", "matplotlib.pyplot", "torch_scatter", "sparsesvd"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))
    monkeypatch.delitem(sys.modules, "sparsesvd")  # as where the C extension is not installed
    done = vs.install_reference_shims()
    assert "scipy.sparse.dok_matrix._update" in done and "torchvision (stand-in)" in done
    assert "sparsesvd (stand-in; raises if called)" in done
    from sparsesvd import sparsesvd  # MMRec's PGL imports it at the top of its file

    with pytest.raises(RuntimeError, match="stand-in"):
        sparsesvd(None, 2)
    assert np.float is float and np.int is int
    a = sp.dok_matrix((3, 3), dtype=np.float32)
    a._update({(0, 1): 1, (2, 0): 1})
    assert a.toarray().tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]
    from torchvision.transforms.functional import resize  # the stand-in

    with pytest.raises(RuntimeError, match="stand-in"):
        resize(None, 3)


def test_settings_name_registered_models_and_real_config_fields(vs):
    # A misspelt model or field would only surface in a long run with the reference.
    import dataclasses

    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import TrainConfig

    assert set(vs.MODEL_SETTINGS) <= set(vs.REFERENCE_NAMES)
    assert set(vs.REFERENCE_SETTINGS) <= set(vs.REFERENCE_NAMES)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for model in vs.REFERENCE_NAMES:
        cls = get_model(model)
        config = build_config(cls, vs.MODEL_SETTINGS.get(model, {}))
        for field, value in vs.MODEL_SETTINGS.get(model, {}).items():
            assert getattr(config, field) == value, (model, field)
        assert set(vs.TRAIN_SETTINGS.get(model, {})) <= train_fields, model


def _write_runs(path, runs):
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    return str(path)


def test_standings_take_each_models_last_record_and_name_its_misses(vs, tmp_path, capsys):
    slow = _run("bm3")
    # a later BM3 sitting, where this project got slower: 9 s against the reference's 18 s
    later = _run("bm3")
    later["epochs"]["ours plain"] = _epochs(9.0, [9.0, 9.0, 9.0], 0.6, 2.0)
    path = _write_runs(tmp_path / "runs.jsonl", [slow, _run("vbpr"), later])
    vs.main(["--standings", path])
    lines = capsys.readouterr().out.splitlines()
    rows = {l.split(" | ")[0][2:]: l for l in lines if l.startswith("| ") and not l.startswith("| model") and not l.startswith("|---")}
    assert sorted(rows) == ["bm3", "vbpr"]
    # the later record wins: 9 / 18 = 0.50 > 0.33, and MG / plain 6.5 / 9 = 0.72
    assert "| 3 | 0.50 / 0.28 | 0.23 | 0.72, 1.28 | epoch plain (0.500 > 0.33) |" in rows["bm3"]
    assert rows["vbpr"].endswith("| none |")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file"),
        ("", "holds no records"),
        ('{"model": "bm3"}\n', "runs.jsonl:1: not a side-by-side record"),
        ("not json\n", "runs.jsonl:1: not a side-by-side record"),
        (json.dumps(_run("bm3")).replace('"train_s": 18.0', '"train_s": "18"') + "\n", "without positive train_s"),
    ],
)
def test_standings_bad_file_is_one_clear_line_and_exit_2(vs, tmp_path, capsys, content, message):
    path = tmp_path / "runs.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        vs.main(["--standings", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_without_reference_or_standings_is_a_usage_error(vs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vs.main(["--models", "vbpr"])
    assert exit_info.value.code == 2
    assert "--reference is required" in capsys.readouterr().err


def test_a_malformed_jsonl_to_resume_from_is_a_usage_error_before_any_work(vs, tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_run("bm3")) + "\nnot json\n")
    with pytest.raises(SystemExit) as exit_info:
        vs.main(["--reference", str(tmp_path), "--jsonl", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "runs.jsonl:2: not a side-by-side record" in err and "Traceback" not in err
    assert path.read_text().count("\n") == 2  # nothing appended


def test_git_head_names_only_the_checkout_at_that_path(vs, tmp_path):
    # A reference tree copied into a folder of another repository must not report that
    # repository's commit; a checkout of its own reports its own.
    import subprocess

    def git(path, *args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True).stdout.strip()

    outer = tmp_path / "outer"
    inner = outer / "copied-reference"
    inner.mkdir(parents=True)
    (inner / "README.md").write_text("reference\n")
    git(outer, "init", "-q")
    git(outer, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(outer, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "outer")
    assert vs._git_head(str(inner)) == "unknown commit"
    assert vs._git_head(str(outer)) == git(outer, "rev-parse", "--short", "HEAD")
    assert vs._git_head(str(tmp_path / "missing")) == "unknown commit"


# ---------------------------------------------------------------------------------------
# --threads: both sides get the same number of threads, and the report says what each had.
# ---------------------------------------------------------------------------------------


class _FakeArm:
    """Stands in for a child process: records how it was started and answers the protocol."""

    started: list = []
    xla_pool: int | None = None  # what the "ours" child would count; None: as the env says

    def __init__(self, side, mg, argv, log_path, env):
        import types

        self.side, self.mg, self.argv, self.env = side, mg, argv, env
        self.proc = types.SimpleNamespace(wait=lambda timeout=None: 0)
        _FakeArm.started.append(self)

    @property
    def label(self):
        return f"{self.side} {'MG' if self.mg else 'plain'}"

    def read(self, expected):
        threads = int(self.argv[self.argv.index("--threads") + 1])
        if expected == "READY" and self.side == "ref":
            return {"torch": "2.13.0", "threads": threads, "interop_threads": 1, "device": "cpu", "shims": [], "batches": 3}
        if expected == "READY":
            pool = _FakeArm.xla_pool if _FakeArm.xla_pool is not None else int(self.env.get("PJRT_NPROC", "16"))
            return {"device": "TFRT_CPU_0", "batches": 3, "xla_threads": pool}
        if expected == "EPOCH":
            return {}
        return {"epochs": [{"epoch": 0, "train_s": 1.0, "eval_s": 1.0}]}

    def go(self):
        pass

    def close(self):
        pass


def _args(threads):
    import argparse

    return argparse.Namespace(threads=threads, epochs=1, ref_python=sys.executable, reference="/tmp/mgref")


def test_both_sides_get_the_thread_count_of_threads(vs, monkeypatch, tmp_path):
    monkeypatch.setattr(vs, "_Arm", _FakeArm)
    monkeypatch.setenv("PJRT_NPROC", "7")  # a value from the caller's environment does not win over --threads
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    _FakeArm.started, _FakeArm.xla_pool = [], None
    run = vs.run_model("vbpr", _args(3), str(tmp_path), str(tmp_path))
    assert len(_FakeArm.started) == 4
    for arm in _FakeArm.started:
        assert arm.argv[arm.argv.index("--threads") + 1] == "3"
        assert arm.env["OMP_NUM_THREADS"] == "3", arm.label
        if arm.side == "ours":
            assert arm.env["PJRT_NPROC"] == "3", arm.label  # the size of XLA's CPU thread pool
    assert run["meta"]["ours plain"]["xla_threads"] == 3 and run["meta"]["ref plain"]["threads"] == 3
    line = vs.threads_note(run["meta"]["ref plain"], run["meta"]["ours plain"], 3)
    assert "torch intra-op 3" in line and "XLA CPU pool 3" in line and "PJRT_NPROC=3" in line


def test_a_side_that_did_not_get_the_thread_count_stops_the_model(vs, monkeypatch, tmp_path):
    monkeypatch.setattr(vs, "_Arm", _FakeArm)
    _FakeArm.started, _FakeArm.xla_pool = [], 16  # e.g. a jaxlib that ignores PJRT_NPROC
    try:
        with pytest.raises(RuntimeError, match=r"ours plain: XLA's CPU thread pool has 16 threads, not --threads 3"):
            vs.run_model("vbpr", _args(3), str(tmp_path), str(tmp_path))
    finally:
        _FakeArm.xla_pool = None


@pytest.mark.parametrize("threads", [1, 3])
def test_the_thread_environment_sizes_xlas_cpu_pool_in_the_installed_jaxlib(vs, threads):
    # The harness's own environment, in a fresh process with the installed jax/jaxlib: the
    # pool really has that many threads (the legacy XLA_FLAGS recipe does not size it).
    import subprocess

    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "import jax, jax.numpy as jnp\n"
        "jax.jit(lambda a: a @ a)(jnp.ones((64, 64))).block_until_ready()\n"
        "import vs_reference\n"
        "print(vs_reference.xla_cpu_threads())\n"
    )
    env = vs.thread_env({**os.environ, "JAX_PLATFORMS": "cpu"}, threads)
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "benchmarks")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(threads)


def test_threads_below_one_is_a_usage_error(vs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vs.main(["--reference", str(tmp_path), "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err


def test_the_report_names_the_repository_the_checkout_is(vs, tmp_path):
    (tmp_path / "mg" / "src" / "models").mkdir(parents=True)
    (tmp_path / "mg" / "src" / "models" / "vbpr.py").write_text("")
    (tmp_path / "mmrec" / "src" / "models").mkdir(parents=True)
    (tmp_path / "mmrec" / "src" / "models" / "pgl.py").write_text("")
    assert vs.reference_repository(str(tmp_path / "mg")) == "Qrange-group/Mirror-Gradient"
    assert vs.reference_repository(str(tmp_path / "mmrec")) == "enoche/MMRec"


# ---------------------------------------------------------------------------------------
# MMRec's newer models: one point of each grid on both sides, and DA-MRS's extra data file.
# ---------------------------------------------------------------------------------------

#: Models whose reference is in MMRec only (an MMRec checkout as --reference).
MMREC_ONLY = ("pgl", "mmgcf", "smore", "lgmrec", "damrs")


def test_mmrec_only_models_are_covered_and_registered(vs):
    from mirrorgrad_jax.models import get_model

    assert set(MMREC_ONLY) <= set(vs.REFERENCE_NAMES)
    for model in vs.REFERENCE_NAMES:
        assert get_model(model).name == model
    assert {m: vs.REFERENCE_NAMES[m] for m in ("smore", "lgmrec", "damrs")} == {"smore": "SMORE", "lgmrec": "LGMRec", "damrs": "DAMRS"}


@pytest.mark.parametrize("model", MMREC_ONLY)
def test_both_sides_train_one_point_of_the_packaged_grid(vs, model):
    # The packaged config holds the reference yaml's grid under this project's names: every
    # list there needs a scalar for one run (the reference's Config would hand the model the
    # list), a point of that grid, which both sides train (ours_child builds its config from
    # the same settings).
    from helpers import packaged_config
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.train import TrainConfig

    cls = get_model(model)
    packaged = packaged_config(model, cls.config_class)
    settings = vs.MODEL_SETTINGS[model]
    build_config(cls, settings)  # our names and values (an unknown option or a wrong value raises)
    for key, value in packaged["model_config"].items():
        if isinstance(value, list):
            assert key in settings and settings[key] in value, (model, key, value)
    ours = TrainConfig(**vs.TRAIN_SETTINGS.get(model, {}))
    lr = packaged["train"]["learning_rate"]
    assert ours.learning_rate in (lr if isinstance(lr, list) else [lr])
    if isinstance(lr, list):  # a grid in the reference's yaml too: the reference needs the scalar
        assert "learning_rate" in vs.REFERENCE_SETTINGS[model], model
    # Otherwise the reference reads its yaml's (or overall.yaml's) 0.001.
    assert vs.REFERENCE_SETTINGS.get(model, {}).get("learning_rate", 1e-3) == ours.learning_rate
    assert tuple(ours.lr_schedule) == tuple(packaged["train"].get("lr_schedule", (1.0, 50.0))), model


def _mmrec_folder(root):
    import dataclasses

    from mirrorgrad_jax.data import make_synthetic, write_mmrec

    dataset = dataclasses.replace(make_synthetic(num_users=40, num_items=30, seed=5), name="baby")
    write_mmrec(dataset, root / "baby")
    return dataset


def test_damrs_gets_its_item_graph_file_and_every_model_its_own_folder(vs, tmp_path):
    np = pytest.importorskip("numpy")
    from mirrorgrad_jax.models.damrs import build_behaviour_graph

    from mirrorgrad_jax.data import load_mmrec

    dataset = _mmrec_folder(tmp_path / "shared")
    shared = tmp_path / "shared" / "baby"
    before = sorted(os.listdir(shared))
    damrs = vs.model_data_folder("damrs", str(tmp_path / "shared"), str(tmp_path))
    smore = vs.model_data_folder("smore", str(tmp_path / "shared"), str(tmp_path))
    assert damrs == str(tmp_path / "data_damrs") and smore == str(tmp_path / "data_smore")
    graph_file = os.path.join(damrs, "baby", "item_graph_dict_2.npy")
    graph = np.load(graph_file, allow_pickle=True).item()
    rows, cols, counts = build_behaviour_graph(dataset.train, dataset.num_items, 2)
    assert graph and graph == {int(i): [cols[rows == i].tolist(), counts[rows == i].tolist()] for i in np.unique(rows)}
    assert sorted(os.listdir(os.path.join(damrs, "baby"))) == sorted(before + ["item_graph_dict_2.npy"])
    assert sorted(os.listdir(os.path.join(smore, "baby"))) == before  # only DA-MRS's reference reads it
    assert sorted(os.listdir(shared)) == before
    # A graph the reference caches in one model's folder reaches no other model's.
    (tmp_path / "data_smore" / "baby" / "image_adj_10_True.pt").write_bytes(b"cache")
    assert not os.path.exists(shared / "image_adj_10_True.pt")
    assert not os.path.exists(os.path.join(damrs, "baby", "image_adj_10_True.pt"))
    copy = load_mmrec(os.path.join(smore, "baby"), verbose=False)
    assert np.array_equal(copy.train, dataset.train) and np.array_equal(copy.features["image"], dataset.features["image"])


def test_the_reference_process_does_not_see_this_repositorys_models_package(vs, tmp_path):
    # MMRec's src/models has no __init__.py: with this repository's root on PYTHONPATH the
    # reference would import our models package (a regular package wins over a namespace one).
    other = str(tmp_path / "elsewhere")
    env = vs.reference_env({"PYTHONPATH": os.pathsep.join([vs.REPOSITORY_ROOT, other]), "HOME": "/h"}, str(tmp_path / "mmrec"))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "mmrec" / "src"), other]
    assert env["HOME"] == "/h"
    assert os.path.isfile(os.path.join(vs.REPOSITORY_ROOT, "models", "__init__.py"))
    assert vs.reference_env({}, str(tmp_path / "mmrec"))["PYTHONPATH"] == str(tmp_path / "mmrec" / "src")


def test_our_arms_count_the_cpu_time_of_the_trainers_rankings(vs, tiny, monkeypatch):
    # The CPU table splits each of our epochs into train and eval by this count. It read 0
    # after train() moved to ranking both splits in one SplitEvaluators call, until the
    # wrapper followed it: one trained epoch must add the CPU time of its rankings.
    from mirrorgrad_jax.evaluation import SplitEvaluators
    from mirrorgrad_jax.models import BPRMF, BPRMFConfig
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    monkeypatch.setattr(SplitEvaluators, "evaluate", SplitEvaluators.evaluate)  # restored afterwards
    state = {"eval_cpu": 0.0}
    vs.count_evaluation_cpu(state)
    train(BPRMF, BPRMFConfig(embedding_size=4), tiny, TrainConfig(epochs=1, batch_size=64), MGConfig(enabled=False), log=None)
    assert state["eval_cpu"] > 0.0
