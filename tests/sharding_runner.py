"""Training runs over simulated devices, in a process of their own (started by tests/test_sharding.py).

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set before JAX starts, so
the multi-device runs cannot share the pytest process; the test starts this script with
the flag set and reads the JSON it writes.

Usage:
  python tests/sharding_runner.py meshes OUT.json JOBS
      JOBS is a comma list of model names (vbpr, lightgcn, freedom: each trained on one
      device and on its meshes of MODEL_MESHES: VBPR on 1, 2x1, 4x1 and 2x2, the others on
      4x1 and 2x2; 2x2 with tables row-sharded over `model`), `checkpoint` (VBPR written on 2x2 and resumed on 1x4) and `lastbatch`
      (VBPR with batches of 50 rows, which divide by no `data` size of 4, on one device
      and on 4x1). Needs 4 devices.
  python tests/sharding_runner.py worker OUT.json COORDINATOR NUM_PROCESSES PROCESS_ID
      one process of a multi-process run of VBPR on the mesh 2x2 (``data`` across processes).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

MODELS = {
    "vbpr": {"embedding_size": 8},
    "lightgcn": {"embedding_size": 8},
    "freedom": {"embedding_size": 8, "knn_k": 4},
}
#: name -> (mesh spec, shard_tables)
MESHES = {
    "one-device": (None, False),
    "1": ("data=1", False),
    "2x1": ("data=2", False),
    "4x1": ("data=4", False),
    "2x2": ("data=2,model=2", True),
}
#: The meshes each model runs on besides one device: VBPR on all; LightGCN and FREEDOM (the
#: graph models) on the two 4-device meshes, rows split four ways and tables split over
#: ``model``. Every run is a program to compile, the suite's main cost.
MODEL_MESHES = {"vbpr": ("1", "2x1", "4x1", "2x2"), "lightgcn": ("4x1", "2x2"), "freedom": ("4x1", "2x2")}


def dataset():
    """60 users x 40 items, 576 train rows: 9 batches of 64, three MG blocks, so an epoch is one
    compiled scan (and the runs stay short)."""
    from mirrorgrad_jax.data import make_synthetic

    ds = make_synthetic(num_users=60, num_items=40, seed=30, modalities={"image": 16, "text": 8})
    assert len(ds.train) == 576, len(ds.train)
    return ds


def train_config(**overrides):
    from mirrorgrad_jax.train import TrainConfig

    base = dict(epochs=2, batch_size=64, eval_batch_size=32, learning_rate=1e-2, topk=(5, 10, 20), valid_metric="recall@20", seed=1)
    return TrainConfig(**{**base, **overrides})


def summary(result) -> dict:
    return {
        "losses": [h["loss"] for h in result.history],
        "valid": [h["valid"] for h in result.history],
        "test": [h["test"] for h in result.history],
        "layout": result.layout,
    }


def run(model: str, mesh: str | None, shard: bool, **kw) -> dict:
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, train

    cls = get_model(model)
    extra = {k: kw.pop(k) for k in ("checkpoint_dir", "resume", "stop_after_epochs", "events") if k in kw}
    result = train(cls, build_config(cls, MODELS[model]), dataset(), train_config(mesh=mesh, shard_tables=shard, **kw), MGConfig(), log=None, **extra)
    return summary(result)


def checkpoint_across_meshes() -> dict:
    """VBPR: epoch 0 on 2x2 (tables split over `model`), saved; resumed on 1x4 for epoch 1."""
    import jax

    from mirrorgrad_jax.train.checkpoint import load_checkpoint
    from mirrorgrad_jax.devices import Placement, make_mesh

    folder = tempfile.mkdtemp(prefix="mg-sharded-ckpt-")
    first = run("vbpr", "data=2,model=2", True, checkpoint_dir=folder, stop_after_epochs=1)
    path = os.path.join(folder, "last.ckpt")
    host = load_checkpoint(path).arrays
    placement = Placement(make_mesh("model=4"), shard_tables=True)
    targets = {
        group: {name: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=placement.shardings(value)) for name, value in host[group].items()}
        for group in ("params", "opt_state")
    }
    onto = load_checkpoint(path, targets=targets).arrays
    users = onto["params"]["users/value"]
    restored = {
        "bit_equal": all(np.array_equal(np.asarray(onto[g][n]), host[g][n]) for g in targets for n in host[g]),
        "users_shape": list(users.shape),
        "users_shards": [list(s.data.shape) for s in users.addressable_shards],
    }
    resumed = run("vbpr", "model=4", True, checkpoint_dir=folder, resume=True)
    return {"first": first, "resumed": resumed, "restored": restored}


def meshes(out: str, jobs: str) -> None:
    results: dict = {"runs": {}}
    for job in jobs.split(","):
        if job == "checkpoint":
            results["checkpoint"] = checkpoint_across_meshes()
            continue
        if job == "lastbatch":
            # 11 batches of 50 and a last one of 26: on data=4 every batch runs replicated.
            results["lastbatch"] = {name: run("vbpr", mesh, False, batch_size=50) for name, mesh in (("one-device", None), ("4x1", "data=4"))}
            continue
        for name in ("one-device", *MODEL_MESHES[job]):
            mesh, shard = MESHES[name]
            results["runs"][f"{job}/{name}"] = run(job, mesh, shard)
    with open(out, "w") as f:
        json.dump(results, f)


def worker(out: str, coordinator: str, num_processes: str, process_id: str) -> None:
    from mirrorgrad_jax.devices import initialize_distributed

    initialize_distributed(coordinator, int(num_processes), int(process_id), timeout_s=120)
    import jax

    from mirrorgrad_jax.train import TensorBoardRun

    folder = os.path.join(os.path.dirname(os.path.abspath(out)), "checkpoints")
    # Both processes are handed the same run folder: only process 0 may write into it.
    with TensorBoardRun(os.path.join(os.path.dirname(os.path.abspath(out)), "events")) as events:
        result = run("vbpr", "data=2,model=2", True, checkpoint_dir=folder, events=events)
    result["process"] = {"index": jax.process_index(), "count": jax.process_count(), "local_devices": jax.local_device_count()}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"meshes": meshes, "worker": worker}[command](*args)
