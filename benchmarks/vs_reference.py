"""Side by side with the PyTorch reference: epoch, evaluation and MG overhead, one sitting.

Given a checkout of the public reference (Qrange-group/Mirror-Gradient, fetched by the
user; nothing of it enters this repository; for MMRec's newer models, PGL, MMGCF, SMORE,
LGMRec and DA-MRS, a checkout of enoche/MMRec, whose trainer and configurator are the same,
MG included), this runs the reference's OWN trainer (``common.trainer.Trainer.fit`` on its
``RecDataset`` / ``TrainDataLoader`` / ``EvalDataLoader`` and its model classes) and this
project's trainer (:func:`mirrorgrad_jax.train.train`) on the SAME data folder with the same
hyper-parameters, and reports per-epoch train time, evaluation time, the MG overhead of
both and the ratios, with the machine, versions and thread counts.

How the two are kept side by side: for every model, four processes are started (reference
plain, reference MG, ours plain, ours MG), one after the other, each stopping before its
first epoch; then the parent hands out ONE epoch at a time, round-robin over the four,
rotating the order every epoch, so the four arms see the same machine state and a drift
in background load (a shared machine) spreads over all of them. A waiting process is
blocked on a pipe and uses no CPU. Each arm trains ``--epochs`` epochs; the first one
(compilation, caches) is reported separately, the others give the median.

What is timed: the reference's ``fit`` prints each epoch's train time (pre-epoch graph
sampling + batches + scheduler step) and ranks the validation AND test splits every
epoch, as this project's trainer does. The evaluation time reported for both is one
full-ranking pass, (valid + test) / 2: for the reference the two passes are the time
from its "training" log line to its "evaluating" log line (both passes run in between;
its own printed eval time covers the validation pass only and is reported too); for
this project it is ``history[i]["eval_s"] / 2``.

The data: the Baby-scale interaction graph (``../shared/data/baby-graph``) with seeded
random features of the real shapes (image 7050 x 4096, text 7050 x 384), built by
``reporting.baby_dataset`` (the loader of ``epoch_time.py``) and written once to a
temporary MMRec folder (``baby/baby.inter``, ``image_feat.npy``, ``text_feat.npy``) that
both trainers read. Each model gets its own hard-linked copy of it
(:func:`model_data_folder`): the reference caches graphs in the dataset folder under names
several models share, and DA-MRS reads an item-item file there that the others do not.

Running the reference today needs compatibility shims; they are applied at run time in
the reference's process (:func:`install_reference_shims`), its files are never edited:

* NumPy >= 1.24 removed the aliases ``np.float`` / ``np.int`` / ``np.bool`` /
  ``np.object`` (its metrics use ``np.float``): restored as the builtins they aliased.
* SciPy's ``dok_matrix`` lost the private ``_update`` (a ``dict.update`` without checks)
  that the BM3 / FREEDOM / LayerGCN adjacency builders call: re-added as an update of
  the matrix's key -> value store.
* ``utils.data_utils`` imports ``torchvision`` unconditionally though only raw-image
  paths use it (and PyPI's torchvision does not import beside the torch 2.13 CPU build):
  an empty stand-in module is installed, whose functions raise if ever called. ``lmdb``,
  ``PIL`` and ``matplotlib`` (imported at the top of modules, unused on this path) get
  the same stand-ins when they are not installed.
* ``torch_scatter`` (a compiled extension with no build for this torch): when it is missing,
  its ``scatter`` / ``scatter_add`` are provided on torch's own ``scatter_reduce``. The
  reference uses them only to build MGCN's sparse kNN graph before training (SLMRec imports
  ``scatter`` and never calls it), so no timed epoch runs them.

The reference environment (its own Python, outside this repository's venv), e.g.::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 numpy scipy pandas pyyaml
    git clone https://github.com/Qrange-group/Mirror-Gradient /tmp/mgref

Usage::

    python benchmarks/vs_reference.py --reference /tmp/mgref --ref-python /tmp/refvenv/bin/python \\
        [--models vbpr,bm3,freedom] [--epochs 4] [--threads 2] [--out benchmarks/results/vs_reference.md]
    python benchmarks/vs_reference.py --standings benchmarks/results/vs_reference_runs.jsonl
        (where each model stands: its last recorded sitting, ratios and the goals it misses)

Threads: ``--threads N`` (default: one per core) gives both sides N intra-op threads: torch
``torch.set_num_threads(N)``, and XLA's CPU client a thread pool of N, sized by the
``PJRT_NPROC`` environment variable (the jaxlib of this project reads it when it sizes the
pool; ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N``, the
recipe of older releases, leaves the pool at one thread per core). ``OMP_NUM_THREADS=N``
for both. Each child reports what it has (torch's thread counts, the number of threads in
XLA's pool, counted in ``/proc``), a side that did not get N stops that model, and the
report's Threads line gives both.

Only the standard library (and ``benchmarks/reporting.py``, which imports nothing else at
its top) is imported at the top of this file: the reference's process runs it with the
reference's Python, which has no JAX.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

from reporting import (
    DEFAULT_GRAPH,
    baby_dataset,
    command_as_run,
    describe_machine,
    format_seconds,
    load_note,
    markdown_table,
    report_header,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = "@@ "

#: The settings both trainers get, per model (the issue's table; the reference's grid values).
#: Keys are this project's config fields; the reference reads the same names.
MODEL_SETTINGS: dict[str, dict] = {
    "vbpr": {"reg_weight": 1e-3},
    "bm3": {"n_layers": 1, "reg_weight": 0.1, "dropout": 0.3},
    "freedom": {"reg_weight": 1e-4, "dropout": 0.8},
    "lattice": {"reg_weight": 1e-4},
    "layergcn": {"n_layers": 4, "reg_weight": 1e-3, "dropout": 0.1},
    "selfcfed_lgn": {"n_layers": 2, "reg_weight": 1e-3, "dropout": 0.2},
    "mmgcn": {"reg_weight": 1e-3},
    # MMRec's newer models (``--reference`` an MMRec checkout: its trainer carries MG too).
    "pgl": {"dropout": 0.2, "reg_weight": 0.0, "mode": "local"},
    "mmgcf": {"n_ui_layers": 2, "reg_weight": 1e-3, "fusion_mode": "mean", "weighting": "equal", "dropout": 0.2},
    # SMORE.yaml's grid, its first point (this project's defaults); cl_loss 0.01 (ours cl_weight) is a scalar there.
    "smore": {"n_ui_layers": 3, "image_knn_k": 10, "text_knn_k": 10, "reg_weight": 1e-5, "dropout_rate": 0.0},
    # LGMRec.yaml: every key a one-value grid (its Baby block).
    "lgmrec": {"n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5, "alpha": 0.3,
               "cl_weight": 1e-4, "reg_weight": 1e-6},
    # DAMRS.yaml: one-value grids (learning_rate too: REFERENCE_SETTINGS); knn_k 10 is a scalar there.
    "damrs": {"n_mm_layers": 1, "n_ui_layers": 2, "kl_weight": 1.0, "neighbor_weight": 1e-3},
}
#: Settings under the reference's own names where they differ from ours (one point of a
#: yaml grid: the reference's config must hold scalars for a single run).
REFERENCE_SETTINGS: dict[str, dict] = {
    "lattice": {"learning_rate": 1e-3},
    "mgcn": {"cl_loss": 0.001},
    # One point of each yaml grid, the values this project's defaults use.
    "slmrec": {"learning_rate": 1e-3, "reg": 1e-4, "ssl_alpha": 0.01, "ssl_temp": 0.1},
    "grcn": {"learning_rate": 1e-3, "reg_weight": 1e-3},
    "mvgae": {"learning_rate": 1e-3},
    "mmgcn": {"learning_rate": 1e-3},
    "dualgnn": {"learning_rate": 1e-3, "reg_weight": 1e-3, "aggr_mode": "add"},
    "dragon": {"learning_rate": 1e-3, "reg_weight": 1e-3, "aggr_mode": "add"},
    "damrs": {"learning_rate": 1e-3},
}
#: Optimizer settings of this project's side where a packaged config sets them (the
#: reference reads the same ``weight_decay`` / ``learning_rate_scheduler`` from its yaml).
TRAIN_SETTINGS: dict[str, dict] = {
    "slmrec": {"weight_decay": 1e-4},
    "smore": {"lr_schedule": (0.96, 50.0)},  # SMORE.yaml's learning_rate_scheduler: [0.96, 50]
    # PGL.yaml's too (from 2026-12-06 20:50; PGL's first sitting ran this side at a constant
    # rate: a schedule changes the step size once per epoch, not the work of an epoch).
    "pgl": {"lr_schedule": (0.96, 50.0)},
}
#: The reference's class (and config file) name per model. Those that import
#: torch_geometric there (SLMRec, GRCN, MVGAE, MMGCN here) need it installed in the
#: reference's environment (2.4.0 still has the ``dropout_adj`` GRCN imports). DualGNN and
#: DRAGON read the user-user graph from the data folder (:func:`write_data_folder` writes it
#: for both sides), DA-MRS its item-item behaviour graph (:func:`model_data_folder` writes it
#: for the reference). On two cores the reference's MMGCN takes ~1.5-2 minutes per epoch and
#: its MVGAE 10-15 minutes (vs_reference.md): budget an hour or more for MVGAE at
#: ``--epochs 2``. Not covered: LightGCN and BPR-MF (not in the reference).
REFERENCE_NAMES = {
    "vbpr": "VBPR",
    "bm3": "BM3",
    "freedom": "FREEDOM",
    "lattice": "LATTICE",
    "mgcn": "MGCN",
    "layergcn": "LayerGCN",
    "selfcfed_lgn": "SELFCFED_LGN",
    "slmrec": "SLMRec",
    "grcn": "GRCN",
    "mvgae": "MVGAE",
    "mmgcn": "MMGCN",
    "dualgnn": "DualGNN",
    "dragon": "DRAGON",
    # In MMRec only (enoche/MMRec, whose trainer and configurator are the Mirror-Gradient
    # repository's, MG included): pass an MMRec checkout as --reference for these.
    "pgl": "PGL",
    "mmgcf": "MMGCF",
    "smore": "SMORE",
    "lgmrec": "LGMRec",
    "damrs": "DAMRS",
}
MG_SETTINGS = {"alpha1": 1.0, "alpha2": 0.2, "beta": 3}
SEED = 999

#: The goals of issue 13: epoch ratio to the reference (per model, default for the rest),
#: evaluation ratio, and MG / plain.
EPOCH_GOAL = {"vbpr": 0.40}
EPOCH_GOAL_DEFAULT = 0.33
EVAL_GOAL = 0.25
MG_GOAL = 1.36

ARMS = (("ref", False), ("ref", True), ("ours", False), ("ours", True))


# ---------------------------------------------------------------------------------------
# Shims for running the reference on current NumPy / SciPy (reference process only).
# ---------------------------------------------------------------------------------------


def _stand_in(name: str, attrs: dict | None = None) -> types.ModuleType:
    """An importable empty module; every missing attribute is a function that raises."""

    module = types.ModuleType(name)
    module.__path__ = []  # a package, so submodule imports resolve to other stand-ins

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*_args, **_kwargs):
            raise RuntimeError(f"{name}.{attr} is a benchmark stand-in (vs_reference.py); this code path needs the real package")

        return unavailable

    module.__getattr__ = __getattr__
    for key, value in (attrs or {}).items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def _missing(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def reference_repository(checkout: str) -> str:
    """Which public repository a checkout is: MMRec has models the Mirror-Gradient repository lacks (PGL)."""
    if os.path.exists(os.path.join(checkout, "src", "models", "pgl.py")):
        return "enoche/MMRec"
    return "Qrange-group/Mirror-Gradient"


def _sparsesvd_stand_in(*_args, **_kwargs):
    raise RuntimeError("sparsesvd is a stand-in here (PGL's mode='global' is not run)")


def install_reference_shims() -> list[str]:
    """Patches NumPy / SciPy / imports so the reference's unmodified code runs; returns what was done."""
    import numpy as np
    import scipy.sparse as sp

    done = []
    for alias, builtin in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
            done.append(f"np.{alias} = {builtin.__name__}")
    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self, data):
            # The old private dict.update: store the entries as given, without checks.
            store = getattr(self, "_dict", None)
            (store.update if store is not None else dict.update.__get__(self))(data)

        sp.dok_matrix._update = _update
        done.append("scipy.sparse.dok_matrix._update")
    transforms = _stand_in("torchvision.transforms")
    _stand_in("torchvision.transforms.functional")
    _stand_in("torchvision", {"transforms": transforms})
    done.append("torchvision (stand-in)")
    if _missing("lmdb"):
        _stand_in("lmdb")
        done.append("lmdb (stand-in)")
    if _missing("PIL"):
        modes = {m: i for i, m in enumerate(("NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX", "HAMMING"))}
        _stand_in("PIL", {"Image": _stand_in("PIL.Image", modes)})
        done.append("PIL (stand-in)")
    if _missing("sparsesvd"):
        # A C extension with no build here; MMRec's PGL imports it at the top of its file and
        # calls it only in mode="global" (neither the side by side nor the parity check runs it).
        _stand_in("sparsesvd", {"sparsesvd": _sparsesvd_stand_in})
        done.append("sparsesvd (stand-in; raises if called)")
    if _missing("torch_scatter"):
        _stand_in("torch_scatter", {"scatter": _scatter, "scatter_add": _scatter_add})
        done.append("torch_scatter (scatter / scatter_add on torch's scatter_reduce)")
    if _missing("matplotlib"):
        _stand_in("matplotlib", {"pyplot": _stand_in("matplotlib.pyplot")})
        done.append("matplotlib (stand-in)")
    return done


def _scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    """torch_scatter.scatter on torch's own ``scatter_reduce`` (sum / mean / max / min).

    The reference calls it only while building graphs (MGCN's sparse kNN Laplacian) or
    imports it unused (SLMRec), so it never runs inside a timed epoch.
    """
    dim = dim % src.dim()
    if index.dim() == 1 and src.dim() > 1:  # broadcast a 1-d index along ``dim``
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape).expand_as(src)
    size = list(src.shape)
    size[dim] = int(index.max()) + 1 if dim_size is None else dim_size
    if out is None:
        out = src.new_zeros(size)
    mode = {"sum": "sum", "add": "sum", "mean": "mean", "max": "amax", "min": "amin"}[reduce]
    return out.scatter_reduce(dim, index, src, reduce=mode, include_self=mode == "sum")


def _scatter_add(src, index, dim=-1, out=None, dim_size=None):
    return _scatter(src, index, dim, out, dim_size, "sum")


def install_cpu_cuda_shim(torch) -> list[str]:
    """On a torch without CUDA, makes the reference behave as on the GPU it was written for.

    * ``.cuda()`` is a no-op: the reference moves a few tensors with ``.cuda()`` instead of
      ``.to(config["device"])`` (LATTICE's item graphs), which raises on a CPU build; with
      the shim those tensors stay on the CPU, where the rest of the model already is.
    * ``Parameter.to(device)`` returns a plain tensor: on a GPU, ``nn.Parameter(...).to(
      "cuda")`` is a copy that is no longer a Parameter, and DualGNN relies on it (it later
      assigns an ordinary tensor to that attribute, which torch refuses for a registered
      Parameter). On the CPU ``.to`` would return the Parameter itself; the shim returns a
      copy instead (``clone``, still attached to the autograd graph), as the GPU does.

    Nothing changes where CUDA exists.
    """
    if torch.cuda.is_available():
        return []
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    parameter_to = torch.nn.Parameter.to

    def to_like_on_a_gpu(self, *args, **kwargs):
        moved = parameter_to(self, *args, **kwargs)
        return moved.clone() if moved is self else moved

    torch.nn.Parameter.to = to_like_on_a_gpu
    return ["Tensor.cuda / Module.cuda = no-op (no CUDA)", "Parameter.to(device) = a plain copy, as on a GPU"]


# ---------------------------------------------------------------------------------------
# The child processes: each runs one arm and yields to the parent between epochs.
# ---------------------------------------------------------------------------------------


def _say(kind: str, payload: dict | None = None) -> None:
    sys.stdout.write(PROTOCOL + kind + " " + json.dumps(payload or {}) + "\n")
    sys.stdout.flush()


def _wait_for_turn() -> float:
    """Blocks until the parent says go; returns the process CPU time at that moment."""
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit("parent went away")
    return time.process_time()


_REF_TRAIN = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
_REF_EVAL = re.compile(r"epoch (\d+) evaluating \[time: ([0-9.]+)s")


class _ReferenceEpochs(logging.Handler):
    """Reads the reference trainer's log lines; yields to the parent after each epoch."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.epochs: list[dict] = []
        self._trained_at = None
        self._trained_cpu = None
        self.resumed_cpu = None  # process CPU time when this arm last got its turn

    def emit(self, record):
        message = record.getMessage()
        train = _REF_TRAIN.search(message)
        if train:
            self._trained_at, self._trained_cpu = time.perf_counter(), time.process_time()
            self.epochs.append(
                {"epoch": int(train.group(1)), "train_s": float(train.group(2)), "train_cpu_s": self._trained_cpu - self.resumed_cpu}
            )
            return
        valid = _REF_EVAL.search(message)
        if valid and self.epochs:
            # fit() ranks valid, then test, then logs: this line comes after both passes.
            both = time.perf_counter() - self._trained_at
            both_cpu = time.process_time() - self._trained_cpu
            self.epochs[-1].update(eval_valid_printed_s=float(valid.group(2)), eval_s=both / 2, eval_cpu_s=both_cpu / 2)
            return
        if message.startswith("test result") and self.epochs:
            _say("EPOCH", self.epochs[-1])
            self.resumed_cpu = _wait_for_turn()


def reference_child(reference: str, data_root: str, model: str, mg: bool, epochs: int, threads: int) -> None:
    """One arm of the reference: its own Config, data loaders, model and ``Trainer.fit``."""
    shims = install_reference_shims()
    import torch

    shims += install_cpu_cuda_shim(torch)
    torch.set_num_threads(threads)
    # The reference's packages (utils, common, models) come from its src/ folder, which the
    # parent puts on this process's PYTHONPATH (run_model).
    os.chdir(os.path.join(reference, "src"))  # the reference reads ./configs/ relative to the working directory
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    name = REFERENCE_NAMES[model]
    overrides = {
        "gpu_id": 0,
        "data_path": data_root.rstrip("/") + "/",
        "epochs": epochs,
        "stopping_step": 10**6,
        "seed": SEED,
        **MODEL_SETTINGS.get(model, {}),
        **REFERENCE_SETTINGS.get(model, {}),
        **MG_SETTINGS,
    }
    config = Config(name, "baby", dict(overrides), mg)
    for key, value in overrides.items():  # scalars, not the yaml grids
        config[key] = value
    logging.getLogger().setLevel(logging.INFO)
    handler = _ReferenceEpochs()
    logging.getLogger().addHandler(handler)
    dataset = RecDataset(config)
    train_ds, valid_ds, test_ds = dataset.split()
    for part in (dataset, train_ds, valid_ds, test_ds):
        str(part)  # quick_start logs these; __str__ sets the inter_num the loaders read
    train_data = TrainDataLoader(config, train_ds, batch_size=config["train_batch_size"], shuffle=True)
    valid_data = EvalDataLoader(config, valid_ds, additional_dataset=train_ds, batch_size=config["eval_batch_size"])
    test_data = EvalDataLoader(config, test_ds, additional_dataset=train_ds, batch_size=config["eval_batch_size"])
    init_seed(SEED)
    train_data.pretrain_setup()
    net = get_model(name)(config, train_data).to(config["device"])
    trainer = get_trainer()(config, net, mg)
    _say(
        "READY",
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "device": str(config["device"]),
            "shims": shims,
            "batches": len(train_data),
        },
    )
    handler.resumed_cpu = _wait_for_turn()
    trainer.fit(train_data, valid_data=valid_data, test_data=test_data, saved=False, verbose=True)
    _say("RESULT", {"epochs": handler.epochs})


#: The name XLA's CPU client gives the threads of its intra-op pool ("tf_" + "XLAEigen").
XLA_POOL_THREAD = "tf_XLAEigen"


def thread_env(env: dict, threads: int) -> dict:
    """``env`` with the thread count both sides use: ``OMP_NUM_THREADS`` and ``PJRT_NPROC`` (the size of XLA's CPU pool)."""
    return {**env, "OMP_NUM_THREADS": str(threads), "PJRT_NPROC": str(threads)}


def xla_cpu_threads() -> int | None:
    """The threads of XLA's CPU intra-op pool in this process (after JAX's CPU client started); None without ``/proc``."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == XLA_POOL_THREAD
        except OSError:  # a thread that ended meanwhile
            continue
    return count


def threads_note(ref_meta: dict, ours_meta: dict, threads: int) -> str:
    """The report's Threads line: what each side had."""
    pool = ours_meta.get("xla_threads")
    return (
        f"--threads {threads}: reference torch intra-op {ref_meta['threads']}, inter-op {ref_meta['interop_threads']}; "
        f"this project XLA CPU pool {pool if pool is not None else 'not counted (' + ours_meta.get('device', 'not recorded') + ')'} (PJRT_NPROC={threads}); "
        f"OMP_NUM_THREADS={threads} for both"
    )


def count_evaluation_cpu(state: dict) -> None:
    """Adds the process CPU time of every ranking pass of ``train()`` to ``state["eval_cpu"]``.

    It splits an epoch's CPU time into training and evaluation. ``train()`` ranks the
    validation and test users in one ``SplitEvaluators.evaluate`` call (one compiled
    program for both splits), so that is the method wrapped, for the rest of the process.
    """
    from mirrorgrad_jax.evaluation import SplitEvaluators

    evaluate = SplitEvaluators.evaluate

    def timed_evaluate(self, *args, **kwargs):
        start = time.process_time()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            state["eval_cpu"] += time.process_time() - start

    SplitEvaluators.evaluate = timed_evaluate


def ours_child(data_folder: str, model: str, mg: bool, epochs: int) -> None:
    """One arm of this project: :func:`mirrorgrad_jax.train.train` as a library."""
    import jax

    from mirrorgrad_jax.data import load_mmrec
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    dataset = load_mmrec(data_folder, verbose=False)
    cls = get_model(model)
    state = {"ready": False, "resumed": 0.0, "eval_cpu": 0.0}
    cpu = []
    count_evaluation_cpu(state)

    def log(message: str) -> None:
        # train() logs once before the first epoch and once after each epoch, outside
        # its timed regions: both are the points where this arm yields.
        if not state["ready"]:
            state["ready"] = True
            # XLA's CPU pool is what computes only on a CPU device; on a GPU it is not counted.
            pool = xla_cpu_threads() if jax.devices()[0].platform == "cpu" else None
            _say("READY", {"device": str(jax.devices()[0]), "batches": -(-len(dataset.train) // 2048), "xla_threads": pool})
        else:
            epoch_cpu = time.process_time() - state["resumed"]
            cpu.append({"train_cpu_s": epoch_cpu - state["eval_cpu"], "eval_cpu_s": state["eval_cpu"] / 2})
            _say("EPOCH", {"line": message.strip(), **cpu[-1]})
        state["resumed"] = _wait_for_turn()
        state["eval_cpu"] = 0.0

    result = train(
        cls,
        build_config(cls, MODEL_SETTINGS.get(model, {})),
        dataset,
        TrainConfig(epochs=epochs, patience=10**6, seed=SEED, **TRAIN_SETTINGS.get(model, {})),
        MGConfig(enabled=mg, **MG_SETTINGS),
        log=log,
    )
    _say(
        "RESULT",
        {"epochs": [{"epoch": h["epoch"], "train_s": h["train_s"], "eval_s": h["eval_s"] / 2, **c} for h, c in zip(result.history, cpu)]},
    )


# ---------------------------------------------------------------------------------------
# The parent: data folder, the four processes, round-robin epochs.
# ---------------------------------------------------------------------------------------


class _Arm:
    def __init__(self, side: str, mg: bool, argv: list[str], log_path: str, env: dict):
        self.side, self.mg = side, mg
        self.log_path = log_path
        self.stderr = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, cwd=ROOT)

    @property
    def label(self) -> str:
        return f"{self.side} {'MG' if self.mg else 'plain'}"

    def read(self, expected: str) -> dict:
        """Reads stdout until the next protocol message; it must be ``expected``."""
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                kind, _, payload = line[len(PROTOCOL):].partition(" ")
                if kind != expected:
                    raise RuntimeError(f"{self.label}: expected {expected}, got {kind}")
                return json.loads(payload)
        self.proc.wait()
        self.stderr.flush()
        with open(self.log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{self.label} exited (code {self.proc.returncode}) before {expected}:\n{tail}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def write_data_folder(graph: str, root: str) -> str:
    """Writes the Baby graph + seeded random features as ``root/baby/`` (MMRec format).

    With the user-user graph of DualGNN and DRAGON, built once by
    :func:`~mirrorgrad_jax.graph.build_user_graph` (the counts of the reference's
    ``dualgnn-gen-u-u-matrix.py``, whose pure-Python loop over user pairs would take hours
    here) and written twice: ``user_graph.npz`` for this project and ``user_graph_dict.npy``,
    the pickled dict the reference's models load. Both sides read the same graph.
    """
    import dataclasses

    import numpy as np

    from mirrorgrad_jax.data import write_mmrec
    from mirrorgrad_jax.graph import build_user_graph

    dataset = baby_dataset(graph)
    user_graph = build_user_graph(dataset.train, dataset.num_users)
    dataset = dataclasses.replace(dataset, name="baby", user_graph=user_graph)
    folder = os.path.join(root, "baby")
    write_mmrec(dataset, folder)
    # For the reference's process only (it loads this with allow_pickle); this project reads
    # user_graph.npz, never this file.
    reference_format = {int(u): [ids.tolist(), weights.tolist()] for u, (ids, weights) in user_graph.items()}
    np.save(os.path.join(folder, "user_graph_dict.npy"), np.array(reference_format, dtype=object), allow_pickle=True)
    return folder


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def model_data_folder(model: str, root: str, work: str) -> str:
    """``work/data_<model>``: the model's own copy of ``root/baby`` (hard links), with its extra files.

    Its own copy: the reference caches graphs in the dataset folder under names several
    models share (MGCN's and SMORE's ``image_adj_<k>_True.pt`` / ``text_adj_<k>_True.pt``,
    FREEDOM's and PGL's ``mm_adj_freedomdsp_<k>_<w>.pt``), which must not feed another
    model. Within one model the reference's plain arm builds and saves them during its
    set-up and its MG arm loads them, before any timed epoch, as two MMRec runs on one folder
    do. (LGMRec reads and writes nothing there.) The reference writes new files only, so the
    links never change the shared folder.

    DA-MRS: ``item_graph_dict_2.npy``, the item-item behaviour graph its reference reads, written
    by ``parity_maps.damrs_item_graph_file`` from this project's ``build_behaviour_graph`` (the
    step-level check writes it the same way).
    """
    own = os.path.join(work, f"data_{model}")
    folder = os.path.join(own, "baby")
    shutil.copytree(os.path.join(root, "baby"), folder, copy_function=_link_or_copy, dirs_exist_ok=True)
    if model == "damrs":
        from parity_maps import damrs_item_graph_file

        # For the reference's process only (it loads this with allow_pickle); this project
        # builds the behaviour graph itself at the model's init, never reads this file.
        damrs_item_graph_file(folder)
    return own


#: This repository's root (``models/``, ``mirrorgrad_jax/``).
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_env(env: dict, reference: str) -> dict:
    """``env`` with the reference checkout's ``src/`` first on PYTHONPATH: its packages import as ``utils.*``, ``common.*``.

    This repository's root is taken off PYTHONPATH (where a user put it to run a checkout
    without installing): MMRec's ``src/models`` has no ``__init__.py``, and a namespace
    package loses to a regular one anywhere on the path, so the reference would import this
    project's ``models`` package instead of its own.
    """
    src = os.path.join(os.path.abspath(reference), "src")
    rest = [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p and os.path.abspath(p) != REPOSITORY_ROOT]
    return {**env, "PYTHONPATH": os.pathsep.join([src, *rest])}


def run_model(model: str, args, data_root: str, log_dir: str) -> dict:
    """The four arms of one model, epochs round-robin; returns per-arm epoch lists and metadata."""
    here = os.path.abspath(__file__)
    # Same intra-op thread count for both sides: torch gets --threads (torch.set_num_threads),
    # XLA's CPU client a pool of that size (PJRT_NPROC); each side reports what it got.
    env = thread_env(dict(os.environ), args.threads)
    common = ["--model", model, "--epochs", str(args.epochs), "--threads", str(args.threads)]
    arms = []
    meta = {}
    try:
        for side, mg in ARMS:
            python = args.ref_python if side == "ref" else sys.executable
            argv = [python, here, "--_child", side, "--_data", data_root, "--reference", args.reference, *common]
            if mg:
                argv.append("--_mg")
            arm_env = reference_env(env, args.reference) if side == "ref" else env
            arm = _Arm(side, mg, argv, os.path.join(log_dir, f"{model}-{side}-{'mg' if mg else 'plain'}.log"), arm_env)
            # Set-ups run one at a time, so none overlaps another arm's work.
            arms.append(arm)
            meta[arm.label] = arm.read("READY")
            had = meta[arm.label].get("threads" if side == "ref" else "xla_threads")
            if had is not None and had != args.threads:
                what = "torch has" if side == "ref" else "XLA's CPU thread pool has"
                raise RuntimeError(f"{arm.label}: {what} {had} threads, not --threads {args.threads}; the two sides would not be comparable")
            print(f"[{model}] {arm.label} ready", file=sys.stderr, flush=True)
        for epoch in range(args.epochs):
            order = arms[epoch % len(arms):] + arms[: epoch % len(arms)]
            for arm in order:
                arm.go()
                line = arm.read("EPOCH")
                print(f"[{model}] epoch {epoch} {arm.label}: {json.dumps(line)}", file=sys.stderr, flush=True)
        results = {}
        for arm in arms:
            arm.go()
            results[arm.label] = arm.read("RESULT")["epochs"]
            arm.proc.wait(timeout=120)
    finally:
        for arm in arms:
            arm.close()
    return {"model": model, "epochs": results, "meta": meta}


# ---------------------------------------------------------------------------------------
# Summary and report (pure functions; tested in tests/test_vs_reference.py).
# ---------------------------------------------------------------------------------------


def summarize(run: dict) -> dict:
    """Medians (epochs after the first), spreads and ratios of one model's four arms.

    Args:
      run: ``{"model": name, "epochs": {"ref plain": [{"train_s", "eval_s"}, ...], "ref MG": ...,
        "ours plain": ..., "ours MG": ...}}``.

    Returns:
      A flat dict: ``{side}_{arm}_epoch`` (median train seconds of epochs 2..n),
      ``..._first`` (epoch 1), ``..._spread`` ((max - min) / median over epochs 2..n),
      ``{side}_eval`` (median over both arms' epochs 2..n of one ranking pass),
      ``ratio_plain``, ``ratio_mg``, ``ratio_eval`` (ours / reference), ``{side}_mg_overhead``
      (MG / plain) and ``goals`` (each goal: value, bound, met).
    """
    out = {"model": run["model"]}
    evals = {"ref": [], "ours": []}
    eval_cpu = {"ref": [], "ours": []}
    has_cpu = all("train_cpu_s" in e for arm in run["epochs"].values() for e in arm)
    for side in ("ref", "ours"):
        for arm in ("plain", "MG"):
            epochs = run["epochs"][f"{side} {arm}"]
            steady = epochs[1:] or epochs
            train = [e["train_s"] for e in steady]
            key = f"{side}_{arm.lower()}"
            out[f"{key}_epoch"] = statistics.median(train)
            out[f"{key}_first"] = epochs[0]["train_s"]
            out[f"{key}_spread"] = (max(train) - min(train)) / statistics.median(train)
            evals[side] += [e["eval_s"] for e in steady]
            if has_cpu:
                out[f"{key}_cpu"] = statistics.median(e["train_cpu_s"] for e in steady)
                eval_cpu[side] += [e["eval_cpu_s"] for e in steady]
        out[f"{side}_eval"] = statistics.median(evals[side])
        out[f"{side}_eval_range"] = (min(evals[side]), max(evals[side]))
        out[f"{side}_mg_overhead"] = out[f"{side}_mg_epoch"] / out[f"{side}_plain_epoch"]
        if has_cpu:
            out[f"{side}_eval_cpu"] = statistics.median(eval_cpu[side])
            out[f"{side}_mg_overhead_cpu"] = out[f"{side}_mg_cpu"] / out[f"{side}_plain_cpu"]
    out["ratio_plain"] = out["ours_plain_epoch"] / out["ref_plain_epoch"]
    out["ratio_mg"] = out["ours_mg_epoch"] / out["ref_mg_epoch"]
    out["ratio_eval"] = out["ours_eval"] / out["ref_eval"]
    if has_cpu:
        out["cpu_ratio_plain"] = out["ours_plain_cpu"] / out["ref_plain_cpu"]
        out["cpu_ratio_mg"] = out["ours_mg_cpu"] / out["ref_mg_cpu"]
        out["cpu_ratio_eval"] = out["ours_eval_cpu"] / out["ref_eval_cpu"]
    bound = EPOCH_GOAL.get(run["model"], EPOCH_GOAL_DEFAULT)
    out["goals"] = {
        "epoch plain": (out["ratio_plain"], bound, out["ratio_plain"] <= bound),
        "epoch MG": (out["ratio_mg"], bound, out["ratio_mg"] <= bound),
        "eval": (out["ratio_eval"], EVAL_GOAL, out["ratio_eval"] <= EVAL_GOAL),
        "MG / plain": (out["ours_mg_overhead"], MG_GOAL, out["ours_mg_overhead"] <= MG_GOAL),
    }
    return out


#: Columns of the wall-time and CPU-time tables of :func:`render`.
TIME_COLUMNS = (
    "model", "reference plain / MG", "this project plain / MG", "ratio plain / MG", "MG / plain: reference, this project",
    "eval: reference, this project", "eval ratio",
)


def _time_row(s: dict, kind: str) -> tuple:
    """One model's row of a time table: ``kind`` "epoch" (wall time) or "cpu" (process CPU time)."""
    f = format_seconds
    ratio = "ratio" if kind == "epoch" else "cpu_ratio"
    eval_key, overhead = ("eval", "mg_overhead") if kind == "epoch" else ("eval_cpu", "mg_overhead_cpu")
    return (
        s["model"], f"{f(s[f'ref_plain_{kind}'])} / {f(s[f'ref_mg_{kind}'])}", f"{f(s[f'ours_plain_{kind}'])} / {f(s[f'ours_mg_{kind}'])}",
        f"{s[f'{ratio}_plain']:.2f} / {s[f'{ratio}_mg']:.2f}", f"{s[f'ref_{overhead}']:.2f}, {s[f'ours_{overhead}']:.2f}",
        f"{f(s[f'ref_{eval_key}'])}, {f(s[f'ours_{eval_key}'])}", f"{s[f'{ratio}_eval']:.2f}",
    )  # fmt: skip


def render(summaries: list[dict], meta: dict) -> str:
    """The markdown report: header (command, date, machine, versions, noise), tables, goals."""
    lines = [
        *report_header(meta["command"], date=meta["date"], machine=meta["machine"]),
        f"Reference: {meta['reference']}  ",
        f"This project: {meta['ours']}  ",
        f"Threads: {meta['threads']}  ",
        f"Noise: {meta['noise']}  ",
        f"Data: {meta['data']}",
        "",
        "Per-epoch train time (median of epochs 2..n, seconds) and one full-ranking evaluation pass "
        "((valid + test) / 2, median over both arms). Ratio = this project / reference.",
        "",
        *markdown_table(TIME_COLUMNS, [_time_row(s, "epoch") for s in summaries]),
    ]
    if all("cpu_ratio_plain" in s for s in summaries):
        lines += [
            "",
            "The same epochs in process CPU time (all threads, seconds): what each side computed, less sensitive than "
            "wall time to other processes on a shared machine (both sides' thread pools also spin while waiting).",
            "",
            *markdown_table(TIME_COLUMNS, [_time_row(s, "cpu") for s in summaries]),
        ]
    lines += [
        "",
        "Goals (issue 13), on the wall-time table: epoch at most 0.33x the reference (VBPR 0.40x), evaluation at most 0.25x, "
        "MG / plain at most 1.36.",
        "",
        *markdown_table(
            ("model", "epoch plain", "epoch MG", "eval", "MG / plain"),
            [
                [s["model"], *(f"{v:.2f} {'<=' if ok else '>'} {b:.2f} {'met' if ok else 'MISSED'}" for v, b, ok in s["goals"].values())]
                for s in summaries
            ],
        ),
        "",
        "Spread and first epochs (spread = (max - min) / median of the timed epochs; first = epoch 1, with compilation for this project):",
        "",
        *markdown_table(
            ("model", "arm", "first epoch (s)", "spread"),
            [
                (s["model"], f"{name} {'MG' if arm == 'mg' else 'plain'}", format_seconds(s[f"{side}_{arm}_first"]), f"{100 * s[f'{side}_{arm}_spread']:.0f}%")
                for s in summaries
                for side, name in (("ref", "reference"), ("ours", "this project"))
                for arm in ("plain", "mg")
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def standings(runs: list[dict]) -> str:
    """One row per model from its LAST record in ``runs`` (file order = the order measured).

    A runs file (``--jsonl``) gathers every sitting; this is the table a reader wants first:
    where each model stands now, with the goals it meets and misses. Timed epochs per arm are
    shown because a ratio resting on one epoch is weaker than one on three.
    """
    latest: dict[str, dict] = {}
    for run in runs:
        latest[run["model"]] = run  # a later sitting replaces an earlier one
    rows = []
    for model in sorted(latest):
        s = summarize(latest[model])
        timed = min(max(len(arm) - 1, 1) for arm in latest[model]["epochs"].values())
        missed = [f"{name} ({v:.3f} > {b:.2f})" for name, (v, b, ok) in s["goals"].items() if not ok]
        rows.append((
            model, timed, f"{s['ratio_plain']:.2f} / {s['ratio_mg']:.2f}", f"{s['ratio_eval']:.2f}",
            f"{s['ours_mg_overhead']:.2f}, {s['ref_mg_overhead']:.2f}", ", ".join(missed) or "none",
        ))  # fmt: skip
    columns = ("model", "timed epochs per arm", "epoch ratio plain / MG", "eval ratio", "MG / plain: this project, reference", "goals missed")
    return "\n".join(markdown_table(columns, rows)) + "\n"


def read_runs(path: str) -> list[dict]:  # not reporting.read_runs: a side-by-side record is checked, a bad line is an error
    """The records of a ``--jsonl`` runs file (possibly none); ValueError naming the line when one is not a run."""
    runs = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                run = json.loads(line)
                arms = run["epochs"]
                if not isinstance(run["model"], str) or any(not arms[k] for k in ("ref plain", "ref MG", "ours plain", "ours MG")):
                    raise KeyError("an arm without epochs")
                for arm in arms.values():
                    for epoch in arm:
                        if not all(isinstance(epoch[k], (int, float)) and epoch[k] > 0 for k in ("train_s", "eval_s")):
                            raise ValueError(f"an epoch without positive train_s / eval_s: {epoch}")
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a side-by-side record ({err})") from None
            runs.append(run)
    return runs


def _git_head(path: str) -> str:
    """The short commit of the checkout at ``path``; "unknown commit" unless ``path`` is a git work tree's top.

    A copy of the reference's files inside another repository (an exported tree, say)
    must not report that repository's commit.
    """
    try:
        def git(*args):
            return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, check=True).stdout.strip()

        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(path):
            return "unknown commit"
        return git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="checkout of Qrange-group/Mirror-Gradient (holds src/main.py); required unless --standings")
    parser.add_argument("--ref-python", default=os.environ.get("MG_REF_PYTHON", sys.executable),
                        help="Python with torch, numpy, scipy, pandas, pyyaml for the reference (default $MG_REF_PYTHON, else this one)")
    parser.add_argument("--models", default="vbpr,bm3,freedom")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per arm; the first is reported apart")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op threads of BOTH sides: torch's, and XLA's CPU pool (PJRT_NPROC); default one per core")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--out", default=None, help="append the markdown report here")
    parser.add_argument("--jsonl", default=None, help="append each model's raw per-epoch times here")
    parser.add_argument("--standings", metavar="JSONL", help="print where each model stands (its last record in this runs file) and exit; runs nothing")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_data", help=argparse.SUPPRESS)
    parser.add_argument("--_mg", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.standings:
        try:
            runs = read_runs(args.standings)
            if not runs:
                raise ValueError(f"{args.standings} holds no records")
            text = standings(runs)
        except (OSError, ValueError) as err:
            parser.error(f"--standings: {err}")
        print(text, end="")
        return
    if not args.reference:
        parser.error("--reference is required (a checkout of Qrange-group/Mirror-Gradient), unless --standings")
    if args.threads is None or args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args._child == "ref":
        reference_child(os.path.abspath(args.reference), args._data, args.model, args._mg, args.epochs, args.threads)
        return
    if args._child == "ours":
        ours_child(os.path.join(args._data, "baby"), args.model, args._mg, args.epochs)
        return
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is reported apart)")
    # Models already measured into --jsonl (an interrupted sitting) are read back, not rerun.
    earlier = {}
    if args.jsonl and os.path.exists(args.jsonl):
        try:
            earlier = {r["model"]: r for r in read_runs(args.jsonl)}
        except ValueError as err:
            parser.error(f"--jsonl: {err}")
    if not os.path.isfile(os.path.join(args.reference, "src", "common", "trainer.py")):
        raise SystemExit(f"{args.reference} does not look like a Mirror-Gradient checkout (no src/common/trainer.py)")
    unknown = [m for m in args.models.split(",") if m not in REFERENCE_NAMES]
    if unknown:
        raise SystemExit(f"--models: {', '.join(unknown)} not covered (choose from {', '.join(REFERENCE_NAMES)})")
    if not os.path.exists(os.path.join(args.graph, "baby.inter")):
        raise SystemExit(f"the Baby graph is not at {args.graph} (it lives in ../shared/data/baby-graph/ beside the project)")
    probe = subprocess.run([args.ref_python, "-c", "import torch, numpy, scipy, pandas, yaml; print(torch.__version__)"], capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"{args.ref_python} cannot import the reference's dependencies:\n{probe.stderr[-2000:]}")

    from importlib.metadata import version

    started = datetime.datetime.now()
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="vs_reference_")
    runs, failures, reused = [], [], []
    try:
        write_data_folder(args.graph, work)
        for model in args.models.split(","):
            if model in earlier:
                print(f"[{model}] read from {args.jsonl}", file=sys.stderr, flush=True)
                runs.append(earlier[model])
                reused.append(model)
                continue
            try:
                run = run_model(model, args, model_data_folder(model, work, work), work)
            except Exception as err:  # one model's failure does not lose the others
                print(f"[{model}] failed: {err}", file=sys.stderr, flush=True)
                failures.append(f"{model}: {str(err).strip().splitlines()[-1][:300]}")
                continue
            runs.append(run)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(run) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not runs:
        raise SystemExit("no model was measured:\n" + "\n".join(failures))
    load_after = os.getloadavg()
    summaries = [summarize(r) for r in runs]
    spreads = [s[f"{side}_{arm}_spread"] for s in summaries for side in ("ref", "ours") for arm in ("plain", "mg")]
    ref_meta = runs[0]["meta"]["ref plain"]
    command = command_as_run("vs_reference.py", argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command,
        "date": f"{started:%Y-%m-%d %H:%M}, {(datetime.datetime.now() - started).total_seconds() / 60:.0f} min"
        + (f" ({', '.join(reused)}: read back from {args.jsonl}, measured by an earlier start)" if reused else ""),
        "machine": describe_machine(device=runs[0]["meta"]["ours plain"]["device"]),
        "reference": (
            f"{reference_repository(args.reference)} @ {_git_head(args.reference)}, torch {ref_meta['torch']} on {ref_meta['device']}, "
            f"shims: {', '.join(ref_meta['shims'])}"
        ),
        "ours": (
            f"flax {version('flax')}, optax {version('optax')} on {runs[0]['meta']['ours plain']['device']} "
            "(jax, jaxlib and XLA_FLAGS: the Machine line)"
        ),
        "threads": threads_note(ref_meta, runs[0]["meta"]["ours plain"], args.threads),
        "noise": (
            f"{load_note(load_before, load_after)}; epoch-time spread per arm "
            f"{100 * min(spreads):.0f}-{100 * max(spreads):.0f}% (median {100 * statistics.median(spreads):.0f}%)"
        ),
        "data": (
            f"Baby graph ({ref_meta['batches']} batches of 2048) with seeded random image 4096-d and text 384-d features, "
            f"one MMRec folder read by both (a hard-linked copy per model); settings {json.dumps({m: MODEL_SETTINGS.get(m, {}) for m in args.models.split(',')})}, "
            f"MG {json.dumps(MG_SETTINGS)}, seed {SEED}; epochs per arm {json.dumps({r['model']: len(r['epochs']['ref plain']) for r in runs})}, the four arms of a model "
            "round-robin one epoch at a time"
        ),
    }
    text = render(summaries, meta)
    if failures:
        text += "\nNot measured (the reference or this project failed to start):\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
