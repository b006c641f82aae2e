"""Scaling out: one program over meshes of simulated devices and over two processes.

The multi-device runs need ``--xla_force_host_platform_device_count`` before JAX starts,
so they run in subprocesses (``tests/sharding_runner.py``), each bounded in time; the
pytest process keeps its single device.

Tolerances: splitting a batch over ``data`` (and tables over ``model``) changes the
float32 summation order of the batch means and of the gradient sums (partial sums per
device, then an all-reduce). One such reordering moves a loss by about one float32 ulp
(~1e-7 relative); over the 20 steps of these runs it stays far below ``LOSS_RTOL =
1e-5`` (measured: <= 1 ulp), while a wrong shard or a lost row moves the loss by more
than 1e-3. The metrics are means of 0/1 hits rounded to 4 decimals: they must agree to
``METRIC_ATOL = 1e-4`` (one unit of the last decimal, for a rounding boundary); a single
changed ranking of one of the 60 users would move them by > 1e-3.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.devices import parse_mesh_spec
from mirrorgrad_jax.train import read_scalars
from sharding_runner import MODEL_MESHES

RUNNER = Path(__file__).with_name("sharding_runner.py")
LOSS_RTOL = 1e-5
METRIC_ATOL = 1e-4
# Seconds a group of simulated-device runs may take before the test fails (measured ~2 min
# on a heavily loaded 2-core machine; far less on a quiet one).
TIMEOUT_S = 600


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _finish(proc: subprocess.Popen, what: str) -> None:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{what} did not finish within {TIMEOUT_S} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{what} failed:\n{out[-4000:]}"


@pytest.fixture(scope="session")
def sharded_runs(tmp_path_factory) -> dict:
    """Every mesh run, once per test session even under pytest-xdist (the first worker that
    needs them runs them while the others wait on a file lock)."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp sits in the session's own folder; without it, the
    # basetemp is already the session's folder.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    results = shared / "sharded_runs.json"
    with open(shared / "sharded_runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not results.exists():
            results.write_text(json.dumps(_run_meshes(shared / "sharded")))
    return json.loads(results.read_text())


def _run_meshes(folder: Path) -> dict:
    """Every mesh run, in two subprocesses of 4 simulated devices each, run side by side."""
    folder.mkdir(exist_ok=True)
    groups = {"vbpr,lastbatch": folder / "a.json", "lightgcn,freedom,checkpoint": folder / "b.json"}
    procs = {
        jobs: subprocess.Popen(
            [sys.executable, str(RUNNER), "meshes", str(out), jobs], env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for jobs, out in groups.items()
    }
    for jobs, proc in procs.items():
        _finish(proc, f"the mesh runs {jobs}")
    merged: dict = {"runs": {}}
    for out in groups.values():
        part = json.loads(out.read_text())
        merged["runs"].update(part["runs"])
        merged.update({k: v for k, v in part.items() if k != "runs"})
    return merged


def _assert_same_run(got: dict, want: dict, what: str) -> None:
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=LOSS_RTOL, err_msg=f"{what}: losses")
    for split in ("valid", "test"):
        for epoch, (g, w) in enumerate(zip(got[split], want[split])):
            assert g.keys() == w.keys()
            for key in w:
                assert abs(g[key] - w[key]) <= METRIC_ATOL, f"{what}: epoch {epoch} {split} {key} {g[key]} != {w[key]}"


def test_mesh_specs_parse_and_bad_ones_are_config_errors():
    assert parse_mesh_spec(None, 4) == {"data": 4, "model": 1}
    assert parse_mesh_spec("auto", 8) == {"data": 8, "model": 1}
    assert parse_mesh_spec("data=2,model=2", 4) == {"data": 2, "model": 2}
    assert parse_mesh_spec("model=2", 8) == {"data": 4, "model": 2}
    assert parse_mesh_spec(" Data=1 ", 4) == {"data": 1, "model": 1}
    for spec, words in [
        ("data=8", "needs 8 devices"),
        ("rows=2", "expected axis=size pairs"),
        ("data=two", "positive integer"),
        ("data=0", "positive integer"),
        ("data=1,data=2", "given twice"),
        ("model=3", "does not divide"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_mesh_spec(spec, 4)


def test_large_has_electronics_shapes_and_scales():
    from mirrorgrad_jax.data import ELECTRONICS_SHAPE, DatasetError, load_dataset, make_large

    assert (ELECTRONICS_SHAPE["num_users"], ELECTRONICS_SHAPE["num_items"]) == (192_403, 63_001)
    small = make_large(0.01, modalities={"image": 32, "text": 8})
    again = make_large(0.01, modalities={"image": 32, "text": 8})
    assert (small.num_users, small.num_items) == (1984, 640)  # 1924 and 630, rounded up to multiples of 64
    total = len(small.train) + len(small.valid) + len(small.test)
    assert total >= 0.01 * ELECTRONICS_SHAPE["interactions"]  # at least Electronics' interactions, scaled
    assert small.features["image"].shape == (640, 32) and small.features["image"].dtype == np.float32
    assert np.array_equal(small.train, again.train) and np.array_equal(small.features["text"], again.features["text"])
    assert load_dataset("large:scale=0.01").features["image"].shape == (640, 4096)
    with pytest.raises(DatasetError, match="large:scale=S"):
        load_dataset("large:size=2")


def test_a_mesh_larger_than_the_devices_is_one_line_exit_2(capsys):
    code = main(["train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--mesh", "data=64", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs 64 devices" in err, err


def test_large_shapes_are_known_before_building_and_a_build_that_cannot_fit_is_refused_in_one_line(monkeypatch, capsys):
    import mirrorgrad_jax.data.large as large
    from mirrorgrad_jax.data import make_large
    from mirrorgrad_jax.data.large import large_shape

    shape, built = large_shape(0.01, {"image": 32, "text": 8}), make_large(0.01, modalities={"image": 32, "text": 8})
    assert (shape.num_users, shape.num_items) == (built.num_users, built.num_items)
    assert shape.feature_bytes == sum(f.nbytes for f in built.features.values())
    total = len(built.train) + len(built.valid) + len(built.test)
    assert abs(total - shape.interactions) <= 0.02 * shape.interactions, (total, shape.interactions)
    # Describing large-10x builds nothing (it holds 11.3 GB of features).
    monkeypatch.setattr(large, "make_large", lambda *a, **k: pytest.fail("built to be described"))
    assert main(["datasets", "large-10x"]) == 0
    out = capsys.readouterr().out
    assert "1924032 users, 630016 items" in out and "image 630016x4096" in out and "11.3 GB float32" in out, out
    monkeypatch.undo()
    # A machine with 1 GB free: Electronics' size (2.7 GB to build) is refused before anything is allocated.
    monkeypatch.setattr(large, "available_memory", lambda: 10**9)
    code = main(["train", "--model", "lightgcn", "--dataset", "large", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "large needs about 2.7 GB of memory to build and 1.0 GB is available here: use a smaller scale, or no features" in err, err
    assert make_large(0.01, modalities={}).num_items == 640  # small builds go on


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--mesh", "data=0"], "positive integer"), (["--mesh", "rows=2"], "axis=size"), (["--device-budget-mb", "-5"], "device_budget_mb must be a finite number > 0")],
)
def test_layout_mistakes_are_reported_before_the_dataset_is_read(tmp_path, capsys, flags, expected):
    # The dataset folder does not exist: had it been read first, the error would name it.
    missing = str(tmp_path / "no-such-dataset")
    code = main(["train", "--model", "bprmf", "--dataset", missing, "--epochs", "1", "--quiet", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err and "no-such-dataset" not in err, err
    assert not (tmp_path / "no-such-dataset").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vbpr", "lightgcn", "freedom"])
def test_every_mesh_trains_and_ranks_as_one_device(sharded_runs, model):
    runs = sharded_runs["runs"]
    one = runs[f"{model}/one-device"]
    assert len(one["losses"]) == 2
    assert sorted(runs) == sorted(f"{m}/{mesh}" for m, meshes in MODEL_MESHES.items() for mesh in ("one-device", *meshes))
    for mesh in MODEL_MESHES[model]:
        _assert_same_run(runs[f"{model}/{mesh}"], one, f"{model} on mesh {mesh}")
        assert runs[f"{model}/{mesh}"]["layout"]["devices"] == {"1": 1, "2x1": 2, "4x1": 4, "2x2": 4}[mesh]


@pytest.mark.slow
def test_batches_that_do_not_divide_by_data_run_replicated_with_the_same_loss(sharded_runs):
    runs = sharded_runs["lastbatch"]
    _assert_same_run(runs["4x1"], runs["one-device"], "batches of 50 and 26 on data=4")


@pytest.mark.slow
def test_tables_are_really_split_over_model(sharded_runs):
    # 60 users, 40 items, VBPR with embedding 8 (users 2d = 16), features 16 + 8 dims.
    shards = sharded_runs["runs"]["vbpr/2x2"]["layout"]["shards"]
    assert shards["params['users'].value"] == [30, 16]
    assert shards["params['items'].value"] == [20, 8]
    assert shards["consts['features'].value"] == [20, 24]
    freedom = sharded_runs["runs"]["freedom/2x2"]["layout"]["shards"]
    assert freedom["params['image_emb'].value"] == [20, 16]  # a trainable raw feature table
    assert freedom["consts['full_rows'].value"] == [576]  # graph edges: 2 x 576 train pairs, half per device
    # Without shard_tables nothing is split (these tables are far below the memory budget).
    assert sharded_runs["runs"]["vbpr/4x1"]["layout"]["shards"] == {}


@pytest.mark.slow
def test_sharded_checkpoint_restores_onto_another_mesh_and_resumes(sharded_runs):
    ckpt = sharded_runs["checkpoint"]
    restored = ckpt["restored"]
    assert restored["bit_equal"], "arrays read onto the 1x4 mesh differ from the saved ones"
    assert restored["users_shape"] == [60, 16] and restored["users_shards"] == [[15, 16]] * 4
    uninterrupted = sharded_runs["runs"]["vbpr/2x2"]
    resumed = ckpt["resumed"]
    assert ckpt["first"]["losses"] == uninterrupted["losses"][:1]
    assert resumed["losses"][:1] == uninterrupted["losses"][:1]  # epoch 0 comes from the checkpoint's history
    assert resumed["layout"]["mesh"] == {"data": 1, "model": 4}
    _assert_same_run(resumed, uninterrupted, "2x2 resumed on 1x4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_reproduce_the_single_process_run(sharded_runs, tmp_path):
    """Two processes of 2 simulated devices each over loopback (gloo collectives), mesh 2x2
    with `data` across the processes, checkpoints written collectively: the same as one
    process holding all 4 devices. Both are handed one TensorBoard run folder: process 0
    alone writes it (one event file, its losses)."""
    coordinator = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(RUNNER), "worker", str(out), coordinator, "2", str(i)],
            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for i, out in enumerate(outs)
    ]
    try:
        for i, proc in enumerate(procs):
            _finish(proc, f"process {i}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = [json.loads(out.read_text()) for out in outs]
    assert [r["process"] for r in results] == [{"index": i, "count": 2, "local_devices": 2} for i in range(2)]
    assert results[0]["layout"]["processes"] == 2
    single = sharded_runs["runs"]["vbpr/2x2"]
    for i, result in enumerate(results):
        _assert_same_run(result, single, f"process {i} of 2")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir() and (tmp_path / "checkpoints" / "best.ckpt").is_dir()
    assert len(list((tmp_path / "events").iterdir())) == 1, "more than one process wrote event files"
    # Exact: the event file stores each loss as float32.
    assert read_scalars(tmp_path / "events")["train/loss"] == [(e, float(np.float32(v))) for e, v in enumerate(results[0]["losses"])]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--coordinator", "localhost:abc", "--num-processes", "1", "--process-id", "0"], "--coordinator must be host:port with a port in 1..65535, got 'localhost:abc'"),
        (["--coordinator", "localhost:0", "--num-processes", "1", "--process-id", "0"], "a port in 1..65535"),
        (["--coordinator", ":1234", "--num-processes", "1", "--process-id", "0"], "must be host:port"),
        (["--coordinator", "localhost:\u00b2", "--num-processes", "1", "--process-id", "0"], "a port in 1..65535"),
        (["--coordinator", "auto"], "--coordinator auto found no cluster to join"),
    ],
)
def test_a_coordinator_that_cannot_work_is_one_line_before_jax_starts(flags, fragment, tmp_path):
    """Run as a user runs it, in a fresh process (JAX's distributed set-up must come before
    anything touches a device, so it cannot be tried inside the test process)."""
    # No cluster for "auto" to find, whatever machine runs the suite (JAX looks for these).
    env = {k: v for k, v in _env(1).items() if not k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    proc = subprocess.run(
        [sys.executable, "-m", "mirrorgrad_jax", "train", "--model", "bprmf", "--dataset", "synthetic-small", "--epochs", "1", "--quiet",
         "--checkpoint-dir", str(tmp_path / "ckpt"), *flags],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err, err
    assert not (tmp_path / "ckpt").exists()
