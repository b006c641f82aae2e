"""``mirrorgrad robustness`` and ``mirrorgrad flatness``: train MG off/on, then measure.

Both train one model per arm (no MG, MG on gradients, MG on updates) and seed, then
print ONE side-by-side table and write ONE figure (plus the table and a JSON report):
``robustness`` measures how the test metric survives noisy or edited item features,
``flatness`` the top Hessian eigenvalue, sharpness and loss slices of the minima. The
work is done by :mod:`mirrorgrad_jax.analysis.comparison`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from mirrorgrad_jax.cli.flags import csv_list, key_values
from mirrorgrad_jax.errors import ConfigError, UserInputError

__all__ = ["ARM_LABELS", "DEFAULT_LR", "register"]

#: Arm name (as --arms writes it) -> the label used in tables and figures.
ARM_LABELS = {"none": "no MG", "gradient": "MG gradient", "update": "MG update"}
#: Learning rates used when --lr is not given (SGD needs a far larger step on BPR losses).
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.5}


def register(subparsers: argparse._SubParsersAction) -> None:
    add_robustness_command(subparsers)
    add_flatness_command(subparsers)


def _add_common_arguments(p: argparse.ArgumentParser, out_dir: str) -> None:
    p.add_argument("--model", default="vbpr", help="registered model name (default vbpr)")
    p.add_argument("--dataset", default="synthetic", help="synthetic | synthetic-small | movielens-100k | an MMRec folder")
    p.add_argument("--arms", type=csv_list(str), default=["none", "gradient", "update"], help="comma list of none, gradient, update (default all three)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="inner optimizer (default adam)")
    p.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULT_LR['adam']:g} for adam, {DEFAULT_LR['sgd']:g} for sgd)")
    p.add_argument("--epochs", type=int, default=30, help="epoch cap (default 30)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (default 5)")
    p.add_argument("--batch-size", type=int, default=1024, help="training batch size (default 1024)")
    p.add_argument("--valid-metric", default="recall@20", help="selection metric; also the metric whose retention is shown (default recall@20)")
    p.add_argument("--alpha1", type=float, default=1.0, help="MG alpha1 (default 1.0)")
    p.add_argument("--alpha2", type=float, default=0.2, help="MG alpha2 (default 0.2)")
    p.add_argument("--beta", type=int, default=3, help="MG interval beta (default 3)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per arm (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=999, help="first training seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--out-dir", default=out_dir, help=f"where the PNG, the table and a JSON report go (default {out_dir})")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")


def _add_robustness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kinds", type=csv_list(str), default=["noise", "campaign"], help="comma list of noise, swap, campaign, missing (mirrorgrad_jax.analysis.perturb.PERTURBATIONS)")
    p.add_argument("--levels", type=csv_list(float), default=[0.5, 1.0, 2.0], help="perturbation levels (default 0.5,1,2)")
    p.add_argument("--perturb-seeds", type=int, default=1, help="perturbation seeds per level (0, 1, ...)")
    p.add_argument("--modality", type=csv_list(str), help="perturbed modality or comma list (default all)")


def _add_flatness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rho", type=float, default=0.05, help="relative sharpness radius (default 0.05)")
    p.add_argument("--directions", type=int, default=10, help="random directions of the random sharpness")
    p.add_argument("--iterations", type=int, default=20, help="power-iteration steps for lambda_max")
    p.add_argument("--flatness-batches", type=int, default=4, help="fixed training batches of the measured loss")


def add_robustness_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``robustness``: train MG off/on, then retention under feature perturbations.

    Example::

        mirrorgrad robustness --model vbpr --dataset synthetic --arms none,gradient,update
    """
    p = subparsers.add_parser(
        "robustness",
        help="train with MG off/on and measure how recommendations survive noisy or edited item features",
        description="Trains one model per arm (MG off / on), then re-ranks the test split with perturbed item "
        "features and reports the metric retention (perturbed / clean), with lambda_max and sharpness when --flatness is set.",
    )
    _add_common_arguments(p, "runs/robustness")
    _add_robustness_arguments(p)
    _add_flatness_arguments(p)
    p.add_argument("--flatness", action="store_true", help="also measure lambda_max and sharpness")
    p.set_defaults(func=_cmd_robustness)
    return p


def add_flatness_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``flatness``: train MG off/on, then lambda_max, sharpness and loss slices.

    Example::

        mirrorgrad flatness --model vbpr --dataset synthetic --optimizer sgd
    """
    p = subparsers.add_parser(
        "flatness",
        help="train with MG off/on and compare the flatness of the minima (lambda_max, sharpness, loss slices)",
        description="Trains one model per arm (MG off / on), then measures the top Hessian eigenvalue, SAM and random "
        "sharpness and 1-D/2-D loss slices of the training loss at the best-validation parameters.",
    )
    _add_common_arguments(p, "runs/flatness")
    _add_flatness_arguments(p)
    _add_robustness_arguments(p)
    p.add_argument("--robustness", action="store_true", help="also measure retention under perturbations")
    p.set_defaults(func=_cmd_flatness)
    return p


def _train_arms(args: argparse.Namespace) -> tuple[type, Any, Any, dict[str, list[Any]], dict[str, list[Any]]]:
    from mirrorgrad_jax.analysis import comparison
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.analysis.perturb import PERTURBATIONS
    from mirrorgrad_jax.train import MGConfig, TrainConfig

    unknown = [a for a in args.arms if a not in ARM_LABELS]
    if unknown or not args.arms:
        raise ConfigError(f"--arms: unknown arm(s) {unknown}; allowed: {', '.join(ARM_LABELS)}")
    unknown_kinds = [k for k in args.kinds if k not in PERTURBATIONS]
    if unknown_kinds:
        raise ConfigError(f"--kinds: unknown perturbation(s) {unknown_kinds}; allowed: {', '.join(PERTURBATIONS)}")
    model_cls = get_model(args.model)
    model_config = build_config(model_cls, key_values(args.set))
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    try:
        configs = [
            TrainConfig(
                epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, learning_rate=lr,
                optimizer=args.optimizer, valid_metric=args.valid_metric, seed=args.seed + i,
            )
            for i in range(args.seeds)
        ]  # fmt: skip
        arms = {
            ARM_LABELS[arm]: MGConfig(
                enabled=arm != "none", alpha1=args.alpha1, alpha2=args.alpha2, beta=args.beta, apply_to="gradient" if arm == "none" else arm
            )
            for arm in args.arms
        }
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid configuration: {err}") from None
    if not model_cls.trainable:
        raise ConfigError(f"{model_cls.name} is not trained, so there is no MG-off/on comparison to make")
    dataset = load_dataset(args.dataset, verbose=not args.quiet)
    print(dataset.summary())
    missing = [m for m in (args.modality or []) if m not in dataset.features]
    if missing:
        raise ConfigError(f"--modality: {dataset.name} has no modality {missing}; available: {', '.join(dataset.features)}")
    states, results = comparison.train_arms(model_cls, model_config, dataset, configs, arms, log=None if args.quiet else print)
    return model_cls, model_config, dataset, states, results


def _run_command(args: argparse.Namespace, name: str, *, robustness: bool, flatness: bool, slices_2d: bool) -> int:
    started = time.perf_counter()
    model_cls, model_config, dataset, states, results = _train_arms(args)
    os.makedirs(args.out_dir, exist_ok=True)
    figure = os.path.join(args.out_dir, f"{name}.png")
    from mirrorgrad_jax.analysis.comparison import compare_runs
    from mirrorgrad_jax.analysis.robustness import DEFAULT_METRICS

    comparison = compare_runs(
        model_cls, model_config, dataset, states,
        path=figure, metrics=(args.valid_metric, *(m for m in DEFAULT_METRICS if m != args.valid_metric)),
        robustness=robustness, kinds=args.kinds, levels=args.levels, perturb_seeds=range(args.perturb_seeds),
        modality=args.modality, flatness=flatness, rho=args.rho, num_directions=args.directions,
        power_iterations=args.iterations, flatness_batches=args.flatness_batches, slices_2d=slices_2d,
        log=None if args.quiet else print,
    )  # fmt: skip
    title = (
        f"{model_cls.name} on {dataset.name}, {args.optimizer}, MG alpha1={args.alpha1:g} alpha2={args.alpha2:g} beta={args.beta}, "
        f"{args.seeds} training seed(s), best-validation ({args.valid_metric}) parameters"
    )
    print()
    print(title)
    print(comparison.table)
    with open(os.path.join(args.out_dir, f"{name}.md"), "w") as f:
        f.write(f"{title}\n\n{comparison.table}\n")
    report = {
        "command": name,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "train": {label: [r.to_dict() for r in rs] for label, rs in results.items()},
        **comparison.to_dict(),
    }
    with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"\nfigure {figure}; table and JSON report in {args.out_dir} ({time.perf_counter() - started:.0f}s)")
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    return _run_command(args, "robustness", robustness=True, flatness=args.flatness, slices_2d=False)


def _cmd_flatness(args: argparse.Namespace) -> int:
    return _run_command(args, "flatness", robustness=args.robustness, flatness=True, slices_2d=True)
