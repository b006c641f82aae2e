"""``mirrorgrad robustness`` and ``mirrorgrad flatness``: train MG off/on, or several methods, then measure.

Both train one model per arm (no MG, MG on gradients, MG on updates) or per training
method (``--methods plain,mg,sam,asam,gnp``, with the knobs of ``mirrorgrad train``) and
seed, then print ONE side-by-side table and write ONE figure (plus the table and a JSON
report): ``robustness`` measures how the test metric survives noisy or edited item
features, ``flatness`` the top Hessian eigenvalue, sharpness and loss slices of the
minima. The work is done by :mod:`mirrorgrad_jax.analysis.robustness` and
:mod:`mirrorgrad_jax.analysis.comparison`; this module only parses and prints.

Shifts: ``--kinds`` with ``--levels`` (one list for every kind, or ``KIND=LEVELS`` per
kind, repeatable), ``--modality`` likewise, or a named ladder, ``--shifts extreme``.

Radii: SAM's and ASAM's training radii are ``--sam-rho`` and ``--asam-rho`` here (``--rho``
of ``mirrorgrad train``, one flag per method since several train in one call); the radius of
the MEASURED sharpness is ``--sharpness-rho``, whose old name ``--rho`` keeps working but is
refused next to SAM or ASAM in ``--methods``, where it would read as a training radius.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from mirrorgrad_jax.cli.flags import check_at_least_one, check_folder_option, csv_list, key_values, lead_with_flag, report_json
from mirrorgrad_jax.cli.train import _FLAGS as TRAIN_FLAGS
from mirrorgrad_jax.cli.train import _set_method
from mirrorgrad_jax.prepare.work import atomic_write
from mirrorgrad_jax.errors import ConfigError, UserInputError

__all__ = ["ARM_LABELS", "DEFAULT_ARMS", "DEFAULT_LR", "KINDS_HELP", "METHOD_KNOB_FLAGS", "METHOD_LABELS", "PRESETS_HELP", "register"]

#: Arm name (as --arms writes it) -> the label used in tables and figures.
ARM_LABELS = {"none": "no MG", "gradient": "MG gradient", "update": "MG update"}
#: The arms trained when neither --arms nor --methods is given.
DEFAULT_ARMS = ["none", "gradient", "update"]
#: Method name (as --methods writes it; ``mirrorgrad_jax.train.METHODS``) -> its label.
METHOD_LABELS = {"plain": "plain", "mg": "MG", "sam": "SAM", "asam": "ASAM", "gnp": "GNP"}
#: This command's method-knob flags (argparse dests) -> (the ``mirrorgrad train`` flag of the
#: same knob, whose config field is taken from that command's table; the one method it sets).
#: ``mirrorgrad train --rho`` is ``--sam-rho`` and ``--asam-rho`` here, one per method (several
#: methods train in one call, and this command's ``--rho`` is the sharpness radius).
METHOD_KNOB_FLAGS = {
    "sam_rho": ("rho", "sam"),
    "asam_rho": ("rho", "asam"),
    "asam_eta": ("asam_eta", "asam"),
    "gnp_alpha": ("gnp_alpha", "gnp"),
    "gnp_radius": ("gnp_radius", "gnp"),
}
#: Learning rates used when --lr is not given (SGD needs a far larger step on BPR losses).
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.5}
#: The sharpness radius when neither --sharpness-rho nor --rho is given.
DEFAULT_SHARPNESS_RHO = 0.05


def register(subparsers: argparse._SubParsersAction) -> None:
    add_robustness_command(subparsers)
    add_flatness_command(subparsers)


def _add_common_arguments(p: argparse.ArgumentParser, out_dir: str) -> None:
    p.add_argument("--model", default="vbpr", help="registered model name (default vbpr)")
    p.add_argument("--dataset", default="synthetic", help="synthetic | synthetic-small | movielens-100k | an MMRec folder")
    p.add_argument("--arms", type=csv_list(str), default=DEFAULT_ARMS, help="comma list of none, gradient, update (default all three); not with --methods")
    p.add_argument(
        "--methods", type=csv_list(str), help="train these methods instead of MG arms: comma list of plain, mg, sam, asam, gnp (as mirrorgrad train --method)"
    )
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="inner optimizer (default adam)")
    p.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULT_LR['adam']:g} for adam, {DEFAULT_LR['sgd']:g} for sgd)")
    p.add_argument("--epochs", type=int, default=30, help="epoch cap (default 30)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (default 5)")
    p.add_argument("--batch-size", type=int, default=1024, help="training batch size (default 1024)")
    p.add_argument("--valid-metric", default="recall@20", help="selection metric; also the metric whose retention is shown (default recall@20)")
    p.add_argument("--alpha1", type=float, default=1.0, help="MG alpha1 (default 1.0)")
    p.add_argument("--alpha2", type=float, default=0.2, help="MG alpha2 (default 0.2)")
    p.add_argument("--beta", type=int, default=3, help="MG interval beta (default 3)")
    p.add_argument("--sam-rho", type=float, metavar="VALUE", help="SAM's ascent radius (mirrorgrad train --method sam --rho; default 0.05)")
    p.add_argument("--asam-rho", type=float, metavar="VALUE", help="ASAM's ascent radius (mirrorgrad train --method asam --rho; default 0.5, Kwon et al.'s: relative to each weight)")
    p.add_argument("--asam-eta", type=float, metavar="VALUE", help="ASAM's floor added to |w| (default 0.01)")
    p.add_argument("--gnp-alpha", type=float, metavar="VALUE", help="the gradient-norm penalty's weight, in [0, 1] (default 0.5)")
    p.add_argument("--gnp-radius", type=float, metavar="VALUE", help="the gradient-norm penalty's finite-difference step (default 0.05)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per arm (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=999, help="first training seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--out-dir", default=out_dir, help=f"where the PNG, the table and a JSON report go (default {out_dir})")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")


#: The perturbation kinds and shift presets as the help names them (written out, so that
#: ``mirrorgrad --help`` does not import JAX; a test keeps them equal to the library's).
KINDS_HELP = "noise, swap, campaign, missing, campaign-items, missing-mean, shuffle"
PRESETS_HELP = "default, extreme"


def _add_robustness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shifts", metavar="PRESET", help=f"a named ladder of kinds and levels: {PRESETS_HELP} (--kinds and --levels override it)")
    p.add_argument("--kinds", type=csv_list(str), help=f"comma list of {KINDS_HELP} (default noise,campaign, or the --shifts ladder's)")
    p.add_argument(
        "--levels", action="append", metavar="[KIND=]LEVELS",
        help="comma list of levels for every kind without its own (default 0.5,1,2; 0.2,0.5,1 for fraction kinds), "
        "or KIND[,KIND]=LEVELS for those kinds; repeatable",
    )  # fmt: skip
    p.add_argument("--perturb-seeds", type=int, help="perturbation seeds per level (0, 1, ...; default 1)")
    p.add_argument("--modality", action="append", metavar="[KIND=]MODALITIES", help="perturbed modality or comma list (default all), or KIND[,KIND]=MODALITIES for those kinds; repeatable")
    p.add_argument(
        "--feature-tables", choices=("trained", "shifted"),
        help="what a shift does to feature tables a model fine-tunes (BM3, FREEDOM, LATTICE, MGCN, SMORE, PGL): keep them as trained "
        "(default; the shift then reaches the model only through what it builds from the features) or add the shift to them",
    )  # fmt: skip


#: Defaults of the options that only one half of a command reads (set after the check below).
_SHIFT_DEFAULTS = {"perturb_seeds": 1, "feature_tables": "trained"}
_FLATNESS_DEFAULTS = {"directions": 10, "iterations": 20, "flatness_batches": 4}
_SHIFT_OPTIONS = ("shifts", "kinds", "levels", "modality", *_SHIFT_DEFAULTS)
_FLATNESS_OPTIONS = ("sharpness_rho", "rho", *_FLATNESS_DEFAULTS)


def _settle_measurements(args: argparse.Namespace, *, robustness: bool, flatness: bool, switch: str) -> None:
    """Refuses an option of a measurement this run does not make, then fills the defaults.

    Raises:
      ConfigError: e.g. ``flatness --kinds noise`` without ``--robustness`` (it measures no
        shifts, so the option would be ignored).
    """
    _sharpness_rho(args)  # --sharpness-rho and its old name --rho disagreeing: that first
    if args.rho is not None and not flatness:
        raise ConfigError(
            f"--rho is this command's old name of the sharpness radius (--sharpness-rho), which this run does not measure (add {switch}): "
            "give SAM's and ASAM's ascent radii as --sam-rho and --asam-rho"
        )
    for measured, options in ((robustness, _SHIFT_OPTIONS), (flatness, _FLATNESS_OPTIONS)):
        given = [name for name in options if getattr(args, name) is not None]
        if given and not measured:
            raise ConfigError(f"--{given[0].replace('_', '-')} sets a measurement this run does not make: add {switch}")
    for name, value in {**_SHIFT_DEFAULTS, **_FLATNESS_DEFAULTS}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _add_flatness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sharpness-rho", type=float, metavar="VALUE", help=f"relative radius of the measured sharpness (default {DEFAULT_SHARPNESS_RHO:g})")
    p.add_argument("--rho", type=float, metavar="VALUE", help="old name of --sharpness-rho (NOT a training radius: those are --sam-rho, --asam-rho)")
    p.add_argument("--directions", type=int, help=f"random directions of the random sharpness (default {_FLATNESS_DEFAULTS['directions']})")
    p.add_argument("--iterations", type=int, help=f"power-iteration steps for lambda_max (default {_FLATNESS_DEFAULTS['iterations']})")
    p.add_argument("--flatness-batches", type=int, help=f"fixed training batches of the measured loss (default {_FLATNESS_DEFAULTS['flatness_batches']})")


def _csv(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_robustness_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``robustness``: train MG off/on (or several methods), then retention under feature perturbations.

    Example::

        mirrorgrad robustness --model vbpr --dataset synthetic --arms none,gradient,update
        mirrorgrad robustness --methods plain,mg,sam --sam-rho 0.1 --shifts extreme --flatness
    """
    p = subparsers.add_parser(
        "robustness",
        help="train with MG off/on (or several methods) and measure how recommendations survive noisy or edited item features",
        description="Trains one model per arm (MG off / on) or per method (--methods), then re-ranks the test split with perturbed item "
        "features and reports the metric retention (perturbed / clean) per kind and level, with lambda_max and sharpness when "
        "--flatness is set. SAM's and ASAM's training radii are --sam-rho and --asam-rho; --rho is the old name of the measured --sharpness-rho.",
    )
    _add_common_arguments(p, "runs/robustness")
    _add_robustness_arguments(p)
    _add_flatness_arguments(p)
    p.add_argument("--flatness", action="store_true", help="also measure lambda_max and sharpness")
    p.set_defaults(func=_cmd_robustness)
    return p


def add_flatness_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``flatness``: train MG off/on (or several methods), then lambda_max, sharpness and loss slices.

    Example::

        mirrorgrad flatness --model vbpr --dataset synthetic --optimizer sgd
    """
    p = subparsers.add_parser(
        "flatness",
        help="train with MG off/on (or several methods) and compare the flatness of the minima (lambda_max, sharpness, loss slices)",
        description="Trains one model per arm (MG off / on) or per method (--methods), then measures the top Hessian eigenvalue, "
        "SAM and random sharpness and 1-D/2-D loss slices of the training loss at the best-validation parameters. "
        "SAM's and ASAM's training radii are --sam-rho and --asam-rho; --rho is the old name of the measured --sharpness-rho.",
    )
    _add_common_arguments(p, "runs/flatness")
    _add_flatness_arguments(p)
    _add_robustness_arguments(p)
    p.add_argument("--robustness", action="store_true", help="also measure retention under perturbations")
    p.set_defaults(func=_cmd_flatness)
    return p


def _kind_specs(texts: list[str] | None, flag: str) -> tuple[list[str] | None, dict[str, list[str]]]:
    """``--levels``/``--modality`` values: (the list for every kind, or None; kind -> its own list).

    ``"0.5,1"`` is the list for every kind; ``"noise=0.5,1"`` and ``"missing,shuffle=1"``
    are lists of the named kinds. A kind, or the list for every kind, given twice is refused.

    Raises:
      ConfigError: an empty side of ``=``, an unknown kind, or a repetition.
    """
    from mirrorgrad_jax.analysis.perturb import PERTURBATIONS

    common: list[str] | None = None
    own: dict[str, list[str]] = {}
    for text in texts or []:
        left, sep, right = text.partition("=")
        if not sep:
            if common is not None:
                raise ConfigError(f"{flag} {text!r}: a list for every kind was already given ({','.join(common)}); name the kind as KIND={text}")
            common = _csv(text)
            if not common:
                raise ConfigError(f"{flag}: empty value {text!r}")
            continue
        kinds, values = _csv(left), _csv(right)
        if not kinds or not values:
            raise ConfigError(f"{flag} expects VALUES or KIND=VALUES, got {text!r}")
        for kind in kinds:
            if kind not in PERTURBATIONS:
                raise ConfigError(f"{flag} {text!r}: unknown perturbation {kind!r}; allowed: {', '.join(PERTURBATIONS)}")
            if kind in own:
                raise ConfigError(f"{flag}: {kind} is given twice")
            own[kind] = values
    return common, own


def _numbers(values: list[str], flag: str, kind: str) -> tuple[float, ...]:
    out = []
    for value in values:
        try:
            out.append(float(value))
        except ValueError:
            raise ConfigError(f"{flag}: {kind} level {value!r} is not a number") from None
    return tuple(out)


def _shifts(args: argparse.Namespace) -> list[Any]:
    """The shifts to measure, from --shifts, --kinds, --levels and --modality.

    Kinds: ``--kinds``, else those of the ``--shifts`` ladder (else noise and campaign, unless
    ``--levels KIND=...`` names kinds: then those), plus every kind ``--levels KIND=...`` names.
    A kind's levels: its own ``--levels KIND=...``, else the common ``--levels``, else the
    ladder's, else :data:`~mirrorgrad_jax.analysis.robustness.DEFAULT_LEVELS`.

    Raises:
      ConfigError: an unknown preset or kind, a level that is not a number or out of range,
        or a ``KIND=`` that ``--kinds`` leaves out.
    """
    from mirrorgrad_jax.analysis.perturb import PERTURBATIONS
    from mirrorgrad_jax.analysis.robustness import DEFAULT_LEVELS, SHIFT_PRESETS, Shift

    preset = {}
    if args.shifts is not None:
        if args.shifts not in SHIFT_PRESETS:
            raise ConfigError(f"--shifts: unknown preset {args.shifts!r}; allowed: {', '.join(SHIFT_PRESETS)}")
        preset = {shift.kind: shift for shift in SHIFT_PRESETS[args.shifts]}
    common_levels, own_levels = _kind_specs(args.levels, "--levels")
    common_modality, own_modality = _kind_specs(args.modality, "--modality")
    if args.kinds is not None:
        unknown = [k for k in args.kinds if k not in PERTURBATIONS]
        if unknown or not args.kinds:
            raise ConfigError(f"--kinds: unknown perturbation(s) {unknown}; allowed: {', '.join(PERTURBATIONS)}")
        if len(set(args.kinds)) != len(args.kinds):
            raise ConfigError(f"--kinds lists a perturbation twice: {','.join(args.kinds)}")
        kinds = list(args.kinds)
        for flag, own in (("--levels", own_levels), ("--modality", own_modality)):
            left_out = [k for k in own if k not in kinds]
            if left_out:
                raise ConfigError(f"{flag} names {', '.join(left_out)}, which --kinds {','.join(kinds)} leaves out")
    else:
        kinds = list(preset) if preset else ([] if own_levels else ["noise", "campaign"])
        kinds += [k for k in own_levels if k not in kinds]
        left_out = [k for k in own_modality if k not in kinds]
        if left_out:
            raise ConfigError(f"--modality names {', '.join(left_out)}, which is not measured (measured: {', '.join(kinds)})")
    shifts = []
    for kind in kinds:
        if kind in own_levels:
            levels = _numbers(own_levels[kind], "--levels", kind)
        elif common_levels is not None:
            levels = _numbers(common_levels, "--levels", kind)
        else:
            levels = preset[kind].levels if kind in preset else DEFAULT_LEVELS[kind]
        modality = own_modality.get(kind, common_modality)
        try:
            shifts.append(Shift(kind, levels, tuple(modality) if modality else None))
        except ValueError as err:
            raise ConfigError(f"--levels: {err}") from None
    return shifts


def _method_configs(args: argparse.Namespace) -> dict[str, tuple[Any, Any]]:
    """Label -> (MGConfig, MethodConfig) of every arm or method, checked.

    Methods are set up as ``mirrorgrad train --method NAME`` sets them up (its
    :func:`~mirrorgrad_jax.cli.train._set_method`), with the knobs of its flags table.

    Raises:
      ConfigError: --arms with --methods, an unknown arm or method, a knob no chosen method
        reads, --rho beside SAM or ASAM, or an invalid value.
    """
    from mirrorgrad_jax.train import METHODS, MethodConfig, MGConfig

    knobs = {dest: getattr(args, dest) for dest in METHOD_KNOB_FLAGS if getattr(args, dest) is not None}
    mg_values = {"alpha1": args.alpha1, "alpha2": args.alpha2, "beta": args.beta}
    try:
        if args.methods is None:
            unknown = [a for a in args.arms if a not in ARM_LABELS]
            if unknown or not args.arms:
                raise ConfigError(f"--arms: unknown arm(s) {unknown}; allowed: {', '.join(ARM_LABELS)}")
            if len(set(args.arms)) != len(args.arms):
                raise ConfigError(f"--arms lists an arm twice: {','.join(args.arms)}")
            if knobs:
                raise ConfigError(f"--{next(iter(knobs)).replace('_', '-')} is a knob of a training method: give --methods")
            return {
                ARM_LABELS[arm]: (MGConfig(enabled=arm != "none", apply_to="gradient" if arm == "none" else arm, **mg_values), MethodConfig())
                for arm in args.arms
            }
        if args.arms is not DEFAULT_ARMS:
            raise ConfigError("--arms and --methods both choose what is trained: give one of them")
        names = [m.lower() for m in args.methods]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ConfigError(f"--methods: unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"--methods lists a method twice: {','.join(args.methods)}")
        if args.rho is not None and {"sam", "asam"} & set(names):
            raise ConfigError(
                "--rho is this command's old name of the sharpness radius (--sharpness-rho), not SAM's: "
                "give SAM's and ASAM's ascent radii as --sam-rho and --asam-rho, the measured sharpness's as --sharpness-rho"
            )
        for dest in knobs:
            owner = METHOD_KNOB_FLAGS[dest][1]
            if owner not in names:
                raise ConfigError(f"--{dest.replace('_', '-')} is a knob of {owner}, and --methods has no {owner}")
        configs = {}
        for name in names:
            sections: dict[str, dict[str, Any]] = {"mg": dict(mg_values), "method": {}}
            _set_method(name, None, sections)
            for dest, value in knobs.items():
                train_flag, owner = METHOD_KNOB_FLAGS[dest]
                if owner == name:
                    section, field = TRAIN_FLAGS[train_flag]
                    sections[section][field] = value
            try:
                configs[METHOD_LABELS[name]] = (MGConfig(**sections["mg"]), MethodConfig(**sections["method"]))
            except UserInputError as err:  # led by the flag that set the field (--sam-rho, not MethodConfig.rho)
                flags = {f"MGConfig.{k}": f"--{k}" for k in mg_values} | {
                    f"MethodConfig.{TRAIN_FLAGS[train_flag][1]}": f"--{dest.replace('_', '-')}"
                    for dest, (train_flag, owner) in METHOD_KNOB_FLAGS.items() if owner == name and dest in knobs
                }  # fmt: skip
                raise lead_with_flag(err, flags) from None
        return configs
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid configuration: {err}") from None


def _sharpness_rho(args: argparse.Namespace) -> float:
    """The measured sharpness's radius: --sharpness-rho, or its old name --rho.

    Raises:
      ConfigError: both given with different values.
    """
    given = {v for v in (args.sharpness_rho, args.rho) if v is not None}
    if len(given) > 1:
        raise ConfigError(f"--sharpness-rho {args.sharpness_rho:g} and --rho {args.rho:g} are one setting (--rho is its old name): give one")
    rho = given.pop() if given else DEFAULT_SHARPNESS_RHO
    if not (math.isfinite(rho) and rho >= 0):
        raise ConfigError(f"--sharpness-rho must be a finite number >= 0, got {rho:g}")
    return rho


def _knobs_text(methods: dict[str, tuple[Any, Any]]) -> str:
    """What each label trained with, e.g. ``"MG alpha2=0.2; SAM rho=0.1"`` (knobs a label does not read left out)."""
    parts = []
    for label, (mg, method) in methods.items():
        if mg.enabled:
            parts.append(f"{label} alpha1={mg.alpha1:g} alpha2={mg.alpha2:g} beta={mg.beta}")
        elif method.name != "none":
            used = [f.name for f in dataclasses.fields(method) if f.name != "name" and f.name not in method.inert_fields()]
            parts.append(f"{label} " + " ".join(f"{k}={getattr(method, k):g}" for k in used))
    return "; ".join(parts) if parts else "no knobs"


def _train(args: argparse.Namespace) -> tuple[type, Any, Any, dict[str, tuple[Any, Any]], list[Any], float, dict[str, list[Any]], dict[str, list[Any]]]:
    """Checks every option, loads the data, trains; nothing is written before training ends."""
    from mirrorgrad_jax.analysis import comparison, shifts as shift_study
    from mirrorgrad_jax.analysis.perturb import check_level
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import TrainConfig

    check_at_least_one(
        ("--seeds", args.seeds), ("--perturb-seeds", args.perturb_seeds),
        ("--directions", args.directions), ("--iterations", args.iterations), ("--flatness-batches", args.flatness_batches),
    )  # fmt: skip
    check_folder_option("--out-dir", args.out_dir)
    methods = _method_configs(args)
    shifts = _shifts(args)
    rho = _sharpness_rho(args)
    model_cls = get_model(args.model)
    options = key_values(args.set)
    grids = [key for key, value in options.items() if isinstance(value, list)]
    if grids:
        raise ConfigError(f"--set {grids[0]}: one value here (a comma list is a grid, which `mirrorgrad train` runs; this command trains one setting)")
    model_config = build_config(model_cls, options)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    try:
        configs = [
            TrainConfig(
                epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, learning_rate=lr,
                optimizer=args.optimizer, valid_metric=args.valid_metric, seed=args.seed + i,
            )
            for i in range(args.seeds)
        ]  # fmt: skip
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid configuration: {err}") from None
    if not model_cls.trainable:
        raise ConfigError(f"{model_cls.name} is not trained, so there is no comparison of training runs to make")
    dataset = load_dataset(args.dataset, verbose=not args.quiet)
    print(dataset.summary())
    for shift in shifts:
        missing = [m for m in shift.modality or () if m not in dataset.features]
        if missing:
            raise ConfigError(f"--modality: {dataset.name} has no modality {missing}; available: {', '.join(dataset.features)}")
        for level in shift.levels:
            try:
                check_level(shift.kind, level, dataset.num_items)
            except ValueError as err:
                raise ConfigError(f"--levels: {err}") from None
    log = None if args.quiet else print
    if args.methods is None:
        states, results = comparison.train_arms(model_cls, model_config, dataset, configs, {label: mg for label, (mg, _) in methods.items()}, log=log)
    else:
        states, results = shift_study.train_methods(model_cls, model_config, dataset, configs, methods, log=log)
    return model_cls, model_config, dataset, methods, shifts, rho, states, results


def _unreached_notes(unreached: list[Any], clean_name: str) -> list[str]:
    """One ``note:`` line per (model, modalities, reason) of the :class:`ShiftNotReached`
    warnings, naming each shift once (seeds of one level share a name)."""
    groups: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
    for w in unreached:
        shift = w.shift.removeprefix(f"{clean_name}~")
        names = groups.setdefault((w.model, w.modalities, w.reason), [])
        if shift not in names:
            names.append(shift)
    lines = []
    for (model, modalities, reason), names in groups.items():
        which = f"({names[0]}) changes none of its scores, so its retention is 1" if len(names) == 1 else (
            f"changes none of its scores under {len(names)} shifts ({', '.join(names)}), so their retention is 1"
        )
        lines.append(f"note: {model}: shifting {', '.join(modalities)} {which}: {reason}")
    return lines


def _run_command(args: argparse.Namespace, name: str, *, robustness: bool, flatness: bool, slices_2d: bool) -> int:
    started = time.perf_counter()
    model_cls, model_config, dataset, methods, shifts, rho, states, results = _train(args)
    created = not os.path.exists(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    figure = os.path.join(args.out_dir, f"{name}.png")
    from mirrorgrad_jax.analysis.robustness import DEFAULT_METRICS, ShiftNotReached
    from mirrorgrad_jax.analysis.shifts import compare_shifts

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ShiftNotReached)
            comparison = compare_shifts(
                model_cls, model_config, dataset, states, shifts if robustness else [],
                path=figure, metrics=(args.valid_metric, *(m for m in DEFAULT_METRICS if m != args.valid_metric)),
                perturb_seeds=range(args.perturb_seeds), flatness=flatness, rho=rho, num_directions=args.directions,
                power_iterations=args.iterations, flatness_batches=args.flatness_batches, batch_size=args.batch_size, slices_2d=slices_2d,
                log=None if args.quiet else print, feature_tables=args.feature_tables,
            )  # fmt: skip
        for line in _unreached_notes([w.message for w in caught if isinstance(w.message, ShiftNotReached)], dataset.name):
            print(line, file=sys.stderr)
        for w in caught:
            if not issubclass(w.category, ShiftNotReached):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    except BaseException:
        if created and not os.listdir(args.out_dir):  # the folder this call made, still empty: not left behind
            os.rmdir(args.out_dir)
        raise
    if args.methods is not None:
        trained_with = f"methods: {_knobs_text(methods)}"
    elif any(mg.enabled for mg, _ in methods.values()):
        trained_with = f"MG alpha1={args.alpha1:g} alpha2={args.alpha2:g} beta={args.beta}"
    else:  # --arms none: the MG settings trained nothing
        trained_with = "MG off"
    title = (
        f"{model_cls.name} on {dataset.name}, {args.optimizer}, {trained_with}, "
        f"{args.seeds} training seed(s), best-validation ({args.valid_metric}) parameters"
    )
    if flatness:
        title += f", sharpness radius {rho:g}"
    if robustness and args.feature_tables == "shifted":
        title += ", shifts added to the fine-tuned feature tables"
    print()
    print(title)
    print(comparison.table)
    # Each report replaces its file whole (a stop mid-write leaves the previous one, not half of this one).
    atomic_write(Path(args.out_dir) / f"{name}.md", lambda f: f.write(f"{title}\n\n{comparison.table}\n".encode()))
    report = {
        "command": name,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "methods": {label: {"mg": dataclasses.asdict(mg), "method": dataclasses.asdict(method)} for label, (mg, method) in methods.items()},
        "shifts": [dataclasses.asdict(shift) for shift in shifts] if robustness else [],
        "sharpness_rho": rho,
        "train": {label: [r.to_dict() for r in rs] for label, rs in results.items()},
        **comparison.to_dict(),
    }
    atomic_write(Path(args.out_dir) / f"{name}.json", lambda f: f.write(report_json(report).encode()))
    print(f"\nfigure {figure}; table and JSON report in {args.out_dir} ({time.perf_counter() - started:.0f}s)")
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    _settle_measurements(args, robustness=True, flatness=args.flatness, switch="--flatness")
    return _run_command(args, "robustness", robustness=True, flatness=args.flatness, slices_2d=False)


def _cmd_flatness(args: argparse.Namespace) -> int:
    _settle_measurements(args, robustness=args.robustness, flatness=True, switch="--robustness")
    return _run_command(args, "flatness", robustness=args.robustness, flatness=True, slices_2d=True)
