"""``mirrorgrad train``: one model on one dataset, with or without Mirror Gradient, over any grid and seeds.

Values come from a YAML config (``--config FILE`` or a model name for its packaged
reference config; lists are grids), then from flags (comma-separated values are grids).
``--method`` picks what the run trains with: plain (one gradient evaluation a batch), mg
(Mirror Gradient, the default: a second evaluation on batches 0, beta, 2 beta, ... of every
epoch, ``1 + ceil(n / beta) / n`` a batch for an epoch of ``n`` batches), or sam, asam or gnp
(the gradient-norm penalty), two evaluations on every batch.
The best combination is selected on the VALIDATION split (``--select-on test``
reproduces the reference's habit of selecting on test, and says so).

Scaling out: ``--mesh data=4`` (or ``data=2,model=2``, ``auto``) trains and evaluates over
a device mesh; ``--shard-tables`` splits the tables over ``model``. Several processes
(hosts): start the same command on each with ``--coordinator HOST:PORT --num-processes N
--process-id I`` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); only
process 0 prints and writes results.

Watching: ``--logdir DIR`` writes one TensorBoard run per combination and seed
(``DIR/vbpr/mg-a2=0.2/seed999``: per-epoch loss, metrics, learning rate and times, the
settings, the selected result); open it with ``tensorboard --logdir DIR``. It needs the
``tensorboard`` extra. On an interactive terminal a progress bar runs over the epochs and
the runs of a grid; ``--quiet`` turns it off with the per-epoch lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

from mirrorgrad_jax.cli.flags import check_at_least_one, check_folder_option, grid_value, key_values, lead_with_flag, report_json
from mirrorgrad_jax.errors import ConfigError, UserInputError

__all__ = ["register", "run", "read_config"]

_TOP_LEVEL_KEYS = ("model", "dataset", "model_config", "train", "mg", "method")

#: flag -> (config section, key)
_FLAGS = {
    "epochs": ("train", "epochs"),
    "patience": ("train", "patience"),
    "min_epochs": ("train", "min_epochs"),
    "lr": ("train", "learning_rate"),
    "optimizer": ("train", "optimizer"),
    "batch_size": ("train", "batch_size"),
    "valid_metric": ("train", "valid_metric"),
    "weight_decay": ("train", "weight_decay"),
    "clip_grad_norm": ("train", "clip_grad_norm"),
    "zero_grad": ("train", "zero_grad"),
    "alpha1": ("mg", "alpha1"),
    "alpha2": ("mg", "alpha2"),
    "beta": ("mg", "beta"),
    "apply_to": ("mg", "apply_to"),
    "schedule": ("mg", "schedule"),
    "rho": ("method", "rho"),
    "asam_eta": ("method", "eta"),
    "gnp_alpha": ("method", "alpha"),
    "gnp_radius": ("method", "radius"),
}


#: What each of those flags sets (``train --help``); the default is read from the config class.
_FLAG_HELP = {
    "epochs": "most epochs a run trains",
    "patience": "stop after this many + 1 epochs without a better validation metric",
    "min_epochs": "never stop early before this many epochs",
    "lr": "learning rate",
    "optimizer": "adam, sgd, adagrad or rmsprop (torch's formulas)",
    "batch_size": "training rows per batch",
    "valid_metric": "the metric that picks the best epoch and stops early, e.g. recall@20",
    "weight_decay": "L2 penalty added to the gradient inside the optimizer (torch's weight_decay)",
    "clip_grad_norm": "clip the gradient's global norm to this (none: no clipping)",
    "zero_grad": "parameters a batch's loss leaves out: zeros (the optimizer sees a zero gradient, torch 1.13) or none (skipped, torch 2)",
    "alpha1": "MG's alpha1, the weight of the first gradient",
    "alpha2": "MG's alpha2, the weight of the mirror gradient (alpha1 > alpha2 > 0)",
    "beta": "MG mirrors one batch in every beta",
    "apply_to": "MG on the gradient (the reference) or on the optimizer's update",
    "schedule": "which batches MG mirrors: reference (the index restarts every epoch), global or algorithm1",
    "rho": "SAM's and ASAM's ascent radius (none: SAM 0.05, ASAM 0.5)",
    "asam_eta": "ASAM's floor added to |w|",
    "gnp_alpha": "the gradient-norm penalty's weight of the perturbed gradient, in [0, 1]",
    "gnp_radius": "the gradient-norm penalty's finite-difference step",
}


_CONFIG_CLASS = {"train": "TrainConfig", "mg": "MGConfig", "method": "MethodConfig"}


def _given_flags(args: argparse.Namespace) -> dict[str, str]:
    """Config field -> flag, for the fields the command line set (a value from a --config file
    keeps the field's name alone in an error)."""
    return {
        f"{_CONFIG_CLASS[section]}.{field}": f"--{flag.replace('_', '-')}"
        for flag, (section, field) in _FLAGS.items()
        if getattr(args, flag, None) is not None
    }


def _flag_help(flag: str) -> str:
    from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig

    section, key = _FLAGS[flag]
    config = {"train": TrainConfig, "mg": MGConfig, "method": MethodConfig}[section]
    default = {f.name: f.default for f in dataclasses.fields(config)}[key]
    shown = "none" if default is None else default
    return f"{_FLAG_HELP[flag]} (default {shown}; a comma list is a grid)"


#: Trainer settings a packaged config may carry that change how a model trains (not when it stops).
_OPTIMIZER_KEYS = ("lr_schedule", "weight_decay")


def _packaged_training_notes(model_name: str, train: dict[str, Any]) -> list[str]:
    """What the model's packaged config trains with that this run (no ``--config``) leaves out:
    its learning-rate schedule and weight decay live in ``models/configs/<model>.yaml``, not in
    the model, so ``--model lattice`` alone trains with a constant learning rate."""
    from mirrorgrad_jax.train import TrainConfig

    if not os.path.exists(_packaged_config(model_name)):
        return []
    packaged = read_config(model_name).get("train") or {}
    default = TrainConfig()
    return [
        f"{model_name}'s packaged config trains with {key}={packaged[key]}, which this run leaves out "
        f"(--config {model_name} runs the packaged settings" + ("; or pass --weight-decay)" if key == "weight_decay" else ")")
        for key in _OPTIMIZER_KEYS
        # TrainConfig's own coercion: YAML's [1.0, 50] is the default (1.0, 50.0)
        if key in packaged and key not in train and getattr(TrainConfig(**{key: packaged[key]}), key) != getattr(default, key)
    ]


def _packaged_config(name: str) -> str:
    """The path of a model's packaged reference config (``models/configs/<name>.yaml``)."""
    from mirrorgrad_jax import models

    return os.path.join(os.path.dirname(models.__file__), "configs", f"{name}.yaml")


def read_config(name: str) -> dict[str, Any]:
    """A YAML run config from a path, or the packaged reference config of a model name.

    Raises:
      ConfigError: no such file or packaged config, bad YAML, or unknown top-level keys.
    """
    from mirrorgrad_jax.config import load_yaml

    path = name
    if not os.path.exists(path):
        packaged = _packaged_config(name)
        if not os.path.exists(packaged):
            raise ConfigError(f"--config {name!r}: no such file, and no packaged config of that name")
        path = packaged
    try:
        with open(path, encoding="utf-8") as f:
            config = load_yaml(f.read()) or {}
    except Exception as err:  # yaml.YAMLError and decoding errors
        raise ConfigError(f"{path}: not a readable YAML file ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {list(_TOP_LEVEL_KEYS)}, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    for section in ("model_config", "train", "mg", "method"):
        if config.get(section) is not None and not isinstance(config[section], dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping, got {config[section]!r}")
    return config


def _set_method(text: str, mg_flag: bool | None, sections: dict[str, dict[str, Any]]) -> None:
    """``--method NAME``: MG on or off, and the ``method`` section's name.

    Raises:
      ConfigError: an unknown name, a comma list, or a contradiction with --mg / --no-mg.
    """
    from mirrorgrad_jax.train import METHODS

    name = text.strip().lower()
    if "," in name:
        raise ConfigError(f"--method takes one method, got {text!r}; benchmarks/flat_minima.py compares methods")
    if name not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {text!r}")
    if mg_flag is not None and mg_flag != (name == "mg"):
        raise ConfigError(f"--method {name} contradicts --{'mg' if mg_flag else 'no-mg'}")
    sections["mg"]["enabled"] = name == "mg"
    sections["method"]["name"] = name if name in ("sam", "asam", "gnp") else "none"


def _check_event_writer() -> None:
    """``--logdir`` without the writer installed: one line saying what to install.

    Raises:
      UserInputError: tensorboardX cannot be imported.
    """
    from mirrorgrad_jax.train import check_event_writer

    try:
        check_event_writer()
    except ImportError as err:  # a missing extra is the user's to install, not a bug
        raise UserInputError(f"--logdir: {err}") from None


def _interactive() -> bool:
    """Whether progress bars belong here: stdout and stderr (where the bars go) are both a terminal."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser("train", help="train a model with or without Mirror Gradient", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", help="model name (see `mirrorgrad models`); default vbpr")
    t.add_argument("--dataset", help="synthetic | synthetic-small | large | large-10x | movielens-100k | an MMRec folder (see `mirrorgrad datasets`)")
    t.add_argument("--config", help="YAML file (keys model, dataset, model_config, train, mg, method; lists = grids), or a model name for its packaged reference config")
    on_off = t.add_mutually_exclusive_group()
    on_off.add_argument("--mg", dest="mg", action="store_true", default=None, help="train with Mirror Gradient (default); the same as --method mg")
    on_off.add_argument("--no-mg", dest="mg", action="store_false", help="train without Mirror Gradient; the same as --method plain")
    t.add_argument("--method", help="what to train with: plain, mg (default), sam, asam or gnp (gradient-norm penalty); knobs --rho, --asam-eta, --gnp-alpha, --gnp-radius")
    for flag in _FLAGS:
        t.add_argument("--" + flag.replace("_", "-"), dest=flag, metavar="VALUE", help=_flag_help(flag))
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option (repeatable; comma list = grid)")
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    t.add_argument("--seed", type=int, default=999, help="first seed (999 as the reference)")
    t.add_argument("--select-on", choices=("valid", "test"), default="valid", help="grid selection split (reference: test)")
    t.add_argument("--results", help="write the full report as JSON here")
    t.add_argument("--checkpoint-dir", help="keep best/last checkpoints here (one subfolder per combination and seed)")
    t.add_argument("--resume", action="store_true", help="resume each run from its last checkpoint")
    t.add_argument("--logdir", metavar="DIR", help="write one TensorBoard run per combination and seed here (needs the tensorboard extra); view with tensorboard --logdir DIR")
    t.add_argument("--quiet", action="store_true", help="no per-epoch output and no progress bars")
    s = t.add_argument_group("scaling out (see the docs page 'Scaling out', docs/scaling.md)")
    s.add_argument("--mesh", help="device mesh, e.g. data=4 or data=2,model=2 ('auto': every device on data); default: one device")
    s.add_argument("--shard-tables", dest="shard_tables", action="store_true", default=None, help="row-shard tables (embeddings, features, graph edges) over the model axis")
    s.add_argument("--device-budget-mb", dest="device_budget_mb", type=float, metavar="MB", help="tables bigger than this are split over the whole mesh (default: 1/8 of a device's memory)")
    s.add_argument("--coordinator", help="HOST:PORT of process 0 for a multi-process run ('auto': detect the cluster); default $JAX_COORDINATOR_ADDRESS")
    s.add_argument("--num-processes", dest="num_processes", type=int, help="processes in a multi-process run; default $JAX_NUM_PROCESSES")
    s.add_argument("--process-id", dest="process_id", type=int, help="this process's rank; default $JAX_PROCESS_ID")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.devices import initialize_distributed

    # Before anything touches a device.
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.train.grid import check_grid, run_grid, summary_table
    from mirrorgrad_jax.devices import make_mesh
    from mirrorgrad_jax.train import LAYOUT_FIELDS, TrainConfig

    primary = jax.process_index() == 0
    config = read_config(args.config) if args.config else {}
    model_name = args.model or config.get("model") or "vbpr"
    dataset_name = args.dataset or config.get("dataset") or "synthetic"
    model_grid = dict(config.get("model_config") or {})
    sections = {"train": dict(config.get("train") or {}), "mg": dict(config.get("mg") or {}), "method": dict(config.get("method") or {})}
    model_grid.update(key_values(args.set))
    for flag, (section, key) in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            try:
                sections[section][key] = grid_value(value)
            except ConfigError as err:
                raise ConfigError(f"--{flag.replace('_', '-')} {err}") from None
    if args.mg is not None:
        sections["mg"]["enabled"] = args.mg
    if args.method is not None:
        _set_method(args.method, args.mg, sections)
    # Not through grid_value: a mesh spec has commas but is one value.
    for key in ("mesh", "shard_tables", "device_budget_mb"):
        if getattr(args, key) is not None:
            sections["train"][key] = getattr(args, key)
    check_at_least_one(("--seeds", args.seeds))
    if args.results and not os.path.isdir(os.path.dirname(os.path.abspath(args.results))):
        raise ConfigError(f"--results {args.results}: its folder does not exist")
    if args.results and os.path.isdir(args.results):
        raise ConfigError(f"--results {args.results}: is a folder; give the JSON file to write")
    check_folder_option("--checkpoint-dir", args.checkpoint_dir)
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume continues the runs kept in --checkpoint-dir: give --checkpoint-dir too")
    seeds = [args.seed + i for i in range(args.seeds)]
    try:
        # The device layout (flags or config file) is checked now, by TrainConfig's own checks and
        # against the devices, not after minutes of reading a large dataset.
        layout = TrainConfig(**{key: sections["train"][key] for key in LAYOUT_FIELDS if key in sections["train"]})
        if layout.mesh is not None:
            make_mesh(layout.mesh)
        # The model name and every combination's config too: an unknown model or a bad value is
        # reported before the dataset is read (which can take minutes), not after.
        if args.logdir:
            _check_event_writer()
        check_grid(model_name, model_grid, sections["train"], sections["mg"], seeds=seeds, select_on=args.select_on,
                   method_grid=sections["method"], logdir=args.logdir, resume=args.resume and args.checkpoint_dir is not None)  # fmt: skip
    except ConfigError as err:
        raise lead_with_flag(err, _given_flags(args)) from None
    if primary and not args.quiet and not args.config:
        for line in _packaged_training_notes(model_name, sections["train"]):
            print(f"note: {line}")
    dataset = load_dataset(dataset_name, verbose=primary)
    if primary:
        print(dataset.summary())
    started = time.perf_counter()
    report = run_grid(
        model_name, dataset, model_grid, sections["train"], sections["mg"],
        seeds=seeds, select_on=args.select_on, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        log=None if args.quiet or not primary else print, method_grid=sections["method"],
        logdir=args.logdir, show_progress=primary and not args.quiet and _interactive(),
    )  # fmt: skip
    report["wall_seconds"] = time.perf_counter() - started
    if not primary:
        return 0
    print(summary_table(report))
    if args.results:
        tmp = args.results + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(report_json(report))
            os.replace(tmp, args.results)
        finally:
            if os.path.exists(tmp):  # a write or rename that failed leaves nothing half-written
                os.remove(tmp)
        print(f"results written to {args.results}")
    return 0
