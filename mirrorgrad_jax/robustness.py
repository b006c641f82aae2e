"""Robustness of trained recommenders to feature changes, and the MG-off/on comparison.

The paper's claim is that Mirror Gradient keeps recommendations stable when item
features are noisy or edited after training. This module measures that:

* :func:`evaluate_params`: rank with trained parameters on a (possibly perturbed)
  dataset; constants derived from features are rebuilt from the given features;
* :func:`robustness_curve` / :func:`summarise` / :func:`plot_robustness`: the metric
  retention (perturbed / clean) over perturbation levels and seeds;
* :func:`train_and_measure` / :func:`load_best_params`: train with the project's
  trainer and get the best-validation parameters back from its ``best.ckpt``;
* :func:`compare_runs`: ONE markdown table and ONE figure for several labelled runs
  (clean metrics, ``lambda_max``, sharpness, retention);
* :func:`add_robustness_command` / :func:`add_flatness_command`: the ``robustness`` and
  ``flatness`` subcommands of the ``mirrorgrad`` command line.

Example::

    trained = train_and_measure(VBPR, VBPRConfig(), ds, TrainConfig(epochs=30), MGConfig(enabled=False))
    rows = robustness_curve(VBPR, VBPRConfig(), ds, trained.params, "noise", [0.5, 1, 2], seeds=[0, 1])
    print(summarise(rows))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.checkpoint import load_checkpoint
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, RankingEvaluator
from mirrorgrad_jax.flatness import (
    LossSlice,
    _pyplot,
    _save,
    check_params_fit,
    contour_levels,
    draw_slice_2d,
    draw_slices_1d,
    hessian_top_eigenvalue,
    loss_slice_1d,
    loss_slice_2d,
    model_train_loss,
    sharpness,
)
from mirrorgrad_jax.perturb import PERTURBATIONS, apply_perturbation
from mirrorgrad_jax.trainer import MGConfig, TrainConfig, TrainResult, train

__all__ = [
    "ARM_LABELS",
    "Comparison",
    "TrainedModel",
    "add_flatness_command",
    "add_robustness_command",
    "compare_runs",
    "evaluate_params",
    "load_best_params",
    "plot_robustness",
    "robustness_curve",
    "summarise",
    "train_and_measure",
]

DEFAULT_METRICS = ("recall@20", "ndcg@20")
#: Command-line arm name -> the label used in tables and figures.
ARM_LABELS: Mapping[str, str] = {"none": "no MG", "gradient": "MG gradient", "update": "MG update"}


# ---------------------------------------------------------------------------------------
# Evaluating given parameters on a given dataset.
# ---------------------------------------------------------------------------------------


def _cutoffs(metrics: Sequence[str]) -> tuple[int, ...]:
    """The ranking cutoffs that ``metrics`` (``"recall@20"``...) need."""
    cutoffs = set()
    for metric in metrics:
        name, _, k = metric.partition("@")
        if name not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"metrics must look like 'recall@20' or 'ndcg@10', got {metric!r}")
        cutoffs.add(int(k))
    return tuple(sorted(cutoffs))


class _ParamsEvaluator:
    """Ranks one split with trained parameters, on the clean or a perturbed copy of a dataset.

    The model is rebuilt on every dataset it is asked about, so feature-derived
    constants follow that dataset's features; the compiled scorer is reused because
    the constants keep their shapes.
    """

    def __init__(self, model_cls: type, model_config: Any, dataset: RecDataset, split: str, topk: Sequence[int], *, eval_batch_size: int = 4096, seed: int = 0):
        self.model_cls, self.model_config, self.dataset, self.seed = model_cls, model_config, dataset, seed
        model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=seed))
        self.graphdef, self.expected, self.rest = nnx.split(model, nnx.Param, ...)
        self.evaluator = RankingEvaluator(dataset.num_items, dataset.train, dataset.split(split), topk=topk, user_block=eval_batch_size)
        self.split = split
        graphdef = self.graphdef

        def scores_fn(state, users):
            p, rest = state
            return nnx.merge(graphdef, p, rest, copy=True).scores(users)

        self.scores_fn = scores_fn

    def _rest_for(self, dataset: RecDataset) -> Any:
        if dataset is self.dataset:
            return self.rest
        clean = self.dataset
        if dataset.num_items != clean.num_items or dataset.num_users != clean.num_users or not all(
            np.array_equal(dataset.split(s), clean.split(s)) for s in ("train", self.split)
        ):
            raise ValueError(f"dataset {dataset.name!r} does not have the splits of {clean.name!r}; only its features may differ")
        model = self.model_cls(dataset, self.model_config, rngs=nnx.Rngs(params=self.seed))
        _, _, rest = nnx.split(model, nnx.Param, ...)
        check_params_fit(self.rest, rest, f"the constants of {self.model_cls.__name__} on {clean.name!r}")
        return rest

    def evaluate(self, params: Any, dataset: RecDataset | None = None, *, round_to: int | None = 4) -> dict[str, float]:
        check_params_fit(self.expected, params, f"{self.model_cls.__name__} on {self.dataset.name!r}")
        rest = self._rest_for(self.dataset if dataset is None else dataset)
        return self.evaluator.evaluate(self.scores_fn, (params, rest), round_to=round_to)


def evaluate_params(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    params: Any,
    split: str = "test",
    topk: Sequence[int] = DEFAULT_TOPK,
    *,
    eval_batch_size: int = 4096,
    round_to: int | None = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Full-ranking metrics of trained parameters on ``dataset``.

    The model is rebuilt on ``dataset``, so every constant derived from features
    (VBPR's feature matrix, item-item graphs...) uses the given, possibly perturbed,
    features; the trained ``nnx.Param`` state is plugged in unchanged. Constants that a
    model refreshes in ``pre_epoch`` are those of a freshly built model.

    Args:
      model_cls: a :class:`~mirrorgrad_jax.models.base.Recommender` class.
      model_config: its config.
      dataset: the data to rank on.
      params: the ``nnx.Param`` state of a trained model (e.g. :func:`load_best_params`).
      split: ``"valid"`` or ``"test"``.
      topk: ranking cutoffs.
      eval_batch_size: users per evaluation block.
      round_to: decimals of each metric (4, as the trainer); ``None`` for full precision.
      seed: seeds the throw-away initial parameters of the rebuilt model.

    Returns:
      ``{'recall@5': ..., ..., 'map@50': ...}``.

    Raises:
      ValueError: ``params`` of another structure or shape than the model's.
    """
    evaluator = _ParamsEvaluator(model_cls, model_config, dataset, split, topk, eval_batch_size=eval_batch_size, seed=seed)
    return evaluator.evaluate(params, round_to=round_to)


# ---------------------------------------------------------------------------------------
# Robustness curves.
# ---------------------------------------------------------------------------------------


def robustness_curve(
    model_cls: type,
    model_config: Any,
    clean_dataset: RecDataset,
    params: Any,
    kind: str,
    levels: Sequence[float],
    seeds: Sequence[int],
    *,
    modality: str | Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    split: str = "test",
    eval_batch_size: int = 4096,
) -> list[dict[str, Any]]:
    """Metrics under a perturbation, for every level and seed, relative to the clean metrics.

    Metrics are computed at full precision (no rounding), so level 0 gives a retention
    of exactly 1.0.

    Args:
      model_cls, model_config: the model.
      clean_dataset: the dataset the parameters were trained on.
      params: the trained ``nnx.Param`` state.
      kind: a perturbation of :func:`~mirrorgrad_jax.perturb.apply_perturbation`.
      levels: its levels (see :data:`~mirrorgrad_jax.perturb.PERTURBATIONS`).
      seeds: perturbation seeds; each (level, seed) is one perturbed dataset.
      modality: perturbed modality (or modalities); ``None`` = all.
      metrics: which metrics to record, e.g. ``("recall@20", "ndcg@20")``.
      split: the ranked split.
      eval_batch_size: users per evaluation block.

    Returns:
      One row per (level, seed): ``{"kind", "level", "seed", "metrics": {m: value},
      "clean": {m: clean value}, "retention": {m: value / clean value}}`` (retention is
      NaN where the clean value is 0).
    """
    metrics = tuple(metrics)
    evaluator = _ParamsEvaluator(model_cls, model_config, clean_dataset, split, _cutoffs(metrics), eval_batch_size=eval_batch_size)
    return _curve(evaluator, params, kind, levels, seeds, modality=modality, metrics=metrics)


def _curve(
    evaluator: _ParamsEvaluator,
    params: Any,
    kind: str,
    levels: Sequence[float],
    seeds: Sequence[int],
    *,
    modality: str | Sequence[str] | None,
    metrics: tuple[str, ...],
) -> list[dict[str, Any]]:
    """:func:`robustness_curve` with a ready evaluator (its compiled scorer is reused)."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; available: {', '.join(PERTURBATIONS)}")
    clean_dataset = evaluator.dataset
    clean_all = evaluator.evaluate(params, round_to=None)
    clean = {m: clean_all[m] for m in metrics}
    rows = []
    for level in levels:
        for seed in seeds:
            perturbed = apply_perturbation(clean_dataset, kind, float(level), seed=int(seed), modality=modality)
            result = evaluator.evaluate(params, perturbed, round_to=None)
            values = {m: result[m] for m in metrics}
            retention = {m: (values[m] / clean[m] if clean[m] else float("nan")) for m in metrics}
            rows.append({"kind": kind, "level": float(level), "seed": int(seed), "metrics": values, "clean": dict(clean), "retention": retention})
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of the retention per (kind, level, metric), over the rows' seeds.

    Args:
      rows: rows of :func:`robustness_curve` (of one or several curves).

    Returns:
      ``[{"kind", "level", "metric", "mean", "std", "n"}, ...]`` sorted by kind,
      metric and level; ``std`` is the sample standard deviation (0 for one row).
    """
    groups: dict[tuple[str, str, float], list[float]] = {}
    for row in rows:
        for metric, value in row["retention"].items():
            groups.setdefault((row["kind"], metric, float(row["level"])), []).append(float(value))
    summary = []
    for (kind, metric, level), values in sorted(groups.items()):
        summary.append(
            {
                "kind": kind,
                "level": level,
                "metric": metric,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
        )
    return summary


#: Axis label of each perturbation's level.
_LEVEL_LABELS = {
    "noise": "noise sigma (x per-dimension feature std)",
    "swap": "fraction of items with another item's features",
    "campaign": "campaign shift (x mean feature-row norm)",
    "missing": "fraction of items with missing features",
}


def _draw_robustness(ax: Any, curves: Mapping[str, Sequence[Mapping[str, Any]]], kind: str, metric: str) -> None:
    for label, summary in curves.items():
        points = sorted((s["level"], s["mean"], s["std"]) for s in summary if s["kind"] == kind and s["metric"] == metric)
        if points:
            levels, means, stds = zip(*points)
            ax.errorbar(levels, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(f"robustness: {kind}")
    ax.set_xlabel(_LEVEL_LABELS.get(kind, "perturbation level"))
    ax.set_ylabel(f"{metric} retention (perturbed / clean)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def _kinds(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> list[str]:
    present = {s["kind"] for summary in curves.values() for s in summary if s["metric"] == metric}
    return [k for k in PERTURBATIONS if k in present] + sorted(present - set(PERTURBATIONS))


def plot_robustness(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, metric: str = "recall@20") -> str:
    """Writes a PNG of retention against perturbation level: one panel per kind, one line per label.

    Args:
      curves: label (e.g. ``"no MG"``, ``"MG gradient"``) -> :func:`summarise` output.
      path: the PNG file (folders are created).
      metric: the metric whose retention is drawn; error bars are the std over seeds.

    Returns:
      The path written.

    Raises:
      ValueError: when no curve has ``metric``.
    """
    kinds = _kinds(curves, metric)
    if not kinds:
        raise ValueError(f"no summary rows for metric {metric!r}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        _draw_robustness(ax, curves, kind, metric)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------
# Training and getting the parameters back.
# ---------------------------------------------------------------------------------------


class TrainedModel(NamedTuple):
    """What :func:`train_and_measure` returns.

    Attributes:
      params: the best-validation ``nnx.Param`` state.
      result: the trainer's :class:`~mirrorgrad_jax.trainer.TrainResult`.
      checkpoint: the ``best.ckpt`` path, or ``None`` when it lived in a temporary folder.
    """

    params: Any
    result: TrainResult
    checkpoint: str | None


def load_best_params(model_cls: type, model_config: Any, dataset: RecDataset, checkpoint_path: str | os.PathLike) -> Any:
    """The ``nnx.Param`` state stored in a trainer checkpoint (``best.ckpt`` or ``last.ckpt``).

    The trainer stores ``params`` as the numpy leaves of the model's ``nnx.Param``
    state in ``jax.tree.leaves`` order; they are put back into the structure of
    ``nnx.split(model, nnx.Param, ...)[1]`` of a model built on ``dataset``.

    Args:
      model_cls, model_config: the model the checkpoint was trained with.
      dataset: a dataset with the training data's sizes.
      checkpoint_path: the checkpoint file.

    Returns:
      The parameter state (jax arrays).

    Raises:
      ValueError: a checkpoint of another model, or leaves that do not fit.
    """
    saved = load_checkpoint(checkpoint_path)
    trained = saved.get("meta", {}).get("model")
    if trained is not None and trained != getattr(model_cls, "name", trained):
        raise ValueError(f"{checkpoint_path} holds a {trained!r} model, not {model_cls.name!r}")
    model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=0))
    _, expected, _ = nnx.split(model, nnx.Param, ...)
    leaves = saved["params"]
    want = jax.tree.leaves(expected)
    if len(leaves) != len(want) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, want)):
        raise ValueError(
            f"{checkpoint_path} does not fit {model_cls.__name__} on {dataset.name!r}: it has {len(leaves)} parameter "
            f"arrays of shapes {[tuple(np.shape(a)) for a in leaves]}, the model {len(want)} of shapes {[tuple(np.shape(b)) for b in want]}"
        )
    return jax.tree.unflatten(jax.tree.structure(expected), [jnp.asarray(x) for x in leaves])


def train_and_measure(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    train_config: TrainConfig = TrainConfig(),
    mg: MGConfig = MGConfig(),
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainedModel:
    """Trains with :func:`mirrorgrad_jax.trainer.train` and returns the best-validation parameters.

    Args:
      model_cls, model_config: the model.
      dataset: the data.
      train_config: trainer settings.
      mg: Mirror Gradient settings.
      checkpoint_dir: where the trainer keeps ``best.ckpt``/``last.ckpt``; ``None``
        uses a temporary folder that is removed afterwards.
      log: progress printer (``None`` for silence).

    Returns:
      A :class:`TrainedModel`.

    Raises:
      RuntimeError: when no epoch finished (no best checkpoint was written).
    """

    def run(folder: str) -> TrainedModel:
        result = train(model_cls, model_config, dataset, train_config, mg, checkpoint_dir=folder, log=log)
        best = os.path.join(folder, "best.ckpt")
        if not os.path.exists(best):
            raise RuntimeError(f"training stopped before any epoch finished ({result.stop_reason}); there are no parameters to measure")
        params = load_best_params(model_cls, model_config, dataset, best)
        return TrainedModel(params, result, best if checkpoint_dir is not None else None)

    if checkpoint_dir is not None:
        return run(os.fspath(checkpoint_dir))
    with tempfile.TemporaryDirectory(prefix="mirrorgrad-") as folder:
        return run(folder)


# ---------------------------------------------------------------------------------------
# The side-by-side comparison.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    """What :func:`compare_runs` produced.

    Attributes:
      table: the markdown table (one row per label).
      figure: the PNG path, or ``None`` when no path was given.
      numbers: label -> column -> list of values (one per run, or per run and
        perturbation seed for retention columns).
      curves: label -> :func:`summarise` output (empty without robustness).
      slices: label -> 1-D :class:`~mirrorgrad_jax.flatness.LossSlice` of its first run.
    """

    table: str
    figure: str | None
    numbers: dict[str, dict[str, list[float]]]
    curves: dict[str, list[dict[str, Any]]]
    slices: dict[str, LossSlice]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (slices as lists)."""
        return {
            "table": self.table,
            "figure": self.figure,
            "numbers": self.numbers,
            "curves": self.curves,
            "slices": {k: {"alphas": s.alphas.tolist(), "losses": np.asarray(s.losses).tolist()} for k, s in self.slices.items()},
        }


def _cell(values: Sequence[float], fmt: str) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite)
    if len(finite) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(statistics.stdev(finite), fmt)}"


def compare_runs(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    runs: Mapping[str, Any],
    *,
    path: str | os.PathLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    robustness: bool = True,
    kinds: Sequence[str] = ("noise", "campaign"),
    levels: Sequence[float] = (0.5, 1.0, 2.0),
    perturb_seeds: Sequence[int] = (0,),
    modality: str | Sequence[str] | None = None,
    flatness: bool = True,
    rho: float = 0.05,
    num_directions: int = 10,
    power_iterations: int = 20,
    flatness_batches: int = 4,
    batch_size: int = 2048,
    slices_2d: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """One markdown table and one figure comparing several labelled training runs.

    Columns: the clean test metrics; with ``flatness``, ``lambda_max`` of the training
    loss (:func:`~mirrorgrad_jax.flatness.hessian_top_eigenvalue`) and the SAM and random
    sharpness at relative radius ``rho``, all on the same fixed training batches
    (:func:`~mirrorgrad_jax.flatness.model_train_loss` with ``seed``); with
    ``robustness``, the retention of ``metrics[0]`` under each kind and level. Cells are
    ``mean ± std`` over a label's runs (and perturbation seeds).

    The figure has one retention panel per kind, a panel of 1-D loss slices along the
    same random direction seed (normalised per run), and with ``slices_2d`` one contour
    panel per label; slices use each label's first run.

    Args:
      model_cls, model_config: the model all runs trained.
      dataset: the clean dataset they trained on.
      runs: label -> trained ``nnx.Param`` state, or a list of them (e.g. one per seed).
      path: PNG to write; ``None`` writes no figure.
      metrics: clean metrics shown; the first is the one whose retention is shown.
      robustness: measure retention.
      kinds, levels, perturb_seeds, modality: see :func:`robustness_curve`.
      flatness: measure ``lambda_max``, sharpness and slices.
      rho: relative sharpness radius.
      num_directions: random directions for the random sharpness.
      power_iterations: Hessian-vector products of the power iteration.
      flatness_batches, batch_size: the fixed training batches of the flatness loss.
      slices_2d: add 2-D slice panels.
      seed: seeds the flatness batches, the power iteration and the directions.
      log: progress printer.

    Returns:
      A :class:`Comparison`.
    """
    say = log or (lambda _m: None)
    metrics = tuple(metrics)
    if not runs:
        raise ValueError("no runs to compare")
    unknown = [k for k in kinds if k not in PERTURBATIONS] if robustness else []
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; available: {', '.join(PERTURBATIONS)}")
    grouped = {label: list(v) if isinstance(v, (list, tuple)) else [v] for label, v in runs.items()}
    evaluator = _ParamsEvaluator(model_cls, model_config, dataset, "test", _cutoffs(metrics))
    key = jax.random.key(seed)
    k_power, k_random, k_slice = jax.random.split(key, 3)
    loss_fn = None
    numbers: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    slices: dict[str, LossSlice] = {}
    slices2: dict[str, LossSlice] = {}
    columns: list[tuple[str, str]] = [(m, ".4f") for m in metrics]
    if flatness:
        columns += [("lambda_max", ".4g"), (f"sharpness SAM (rho={rho:g})", ".3g"), (f"sharpness random (rho={rho:g})", ".3g")]
    if robustness:
        columns += [(f"{kind} {float(level):g}", ".3f") for kind in kinds for level in levels]
    for label, param_list in grouped.items():
        t0 = time.perf_counter()
        cols: dict[str, list[float]] = {name: [] for name, _ in columns}
        rows: list[dict[str, Any]] = []
        for index, params in enumerate(param_list):
            clean = evaluator.evaluate(params)
            for m in metrics:
                cols[m].append(clean[m])
            if flatness:
                if loss_fn is None:  # one loss for every run: the same batches, one compilation
                    loss_fn = model_train_loss(model_cls, model_config, dataset, params, seed=seed, num_batches=flatness_batches, batch_size=batch_size)
                cols["lambda_max"].append(hessian_top_eigenvalue(loss_fn, params, iterations=power_iterations, key=k_power)[0])
                cols[f"sharpness SAM (rho={rho:g})"].append(sharpness(loss_fn, params, rho, method="sam")["sharpness"])
                cols[f"sharpness random (rho={rho:g})"].append(
                    sharpness(loss_fn, params, rho, method="random", num_directions=num_directions, key=k_random)["sharpness"]
                )
                if index == 0:
                    slices[label] = loss_slice_1d(loss_fn, params, key=k_slice)
                    if slices_2d:
                        slices2[label] = loss_slice_2d(loss_fn, params, key=k_slice)
            if robustness:
                for kind in kinds:
                    for row in _curve(evaluator, params, kind, levels, perturb_seeds, modality=modality, metrics=metrics):
                        cols[f"{kind} {row['level']:g}"].append(row["retention"][metrics[0]])
                        rows.append(row)
        numbers[label] = cols
        if robustness:
            curves[label] = summarise(rows)
        say(f"measured {label!r} ({len(param_list)} run(s)) in {time.perf_counter() - t0:.1f}s")

    header = ["run", "n"] + [name for name, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for label, cols in numbers.items():
        lines.append("| " + " | ".join([label, str(len(grouped[label]))] + [_cell(cols[name], fmt) for name, fmt in columns]) + " |")
    if robustness:
        lines.append("")
        lines.append(f"Retention columns: test {metrics[0]} under the perturbation / clean test {metrics[0]} (1 = unaffected).")
        lines.extend(f"- {kind}: level = {PERTURBATIONS[kind]}" for kind in kinds)
    table = "\n".join(lines)

    figure = None
    if path is not None:
        figure = _plot_comparison(curves, slices, slices2, metrics[0], path)
    return Comparison(table, figure, numbers, curves, slices)


def _plot_comparison(curves, slices, slices2, metric, path) -> str | None:
    kinds = _kinds(curves, metric) if curves else []
    panels = len(kinds) + (1 if slices else 0) + len(slices2)
    if panels == 0:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 4), squeeze=False)
    axes = list(axes[0])
    for kind in kinds:
        _draw_robustness(axes.pop(0), curves, kind, metric)
    if slices:
        draw_slices_1d(axes.pop(0), slices)
    levels = contour_levels(slices2) if slices2 else None
    for label, s in slices2.items():
        draw_slice_2d(axes.pop(0), f"2-D loss slice: {label}", s, fig, levels)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------
# Command line: `mirrorgrad robustness` and `mirrorgrad flatness`.
# ---------------------------------------------------------------------------------------

#: Learning rates used when ``--lr`` is not given (SGD needs a far larger step on BPR losses).
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.5}


def _csv(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [cast(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}: {err}") from None

    return parse


def _add_common_arguments(p: argparse.ArgumentParser, out_dir: str) -> None:
    p.add_argument("--model", default="vbpr", help="registered model name (default vbpr)")
    p.add_argument("--dataset", default="synthetic", help="synthetic | synthetic-small | movielens-100k | an MMRec folder")
    p.add_argument("--arms", type=_csv(str), default=["none", "gradient", "update"], help="comma list of none, gradient, update (default all three)")
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
    p.add_argument("--kinds", type=_csv(str), default=["noise", "campaign"], help=f"comma list of {', '.join(PERTURBATIONS)}")
    p.add_argument("--levels", type=_csv(float), default=[0.5, 1.0, 2.0], help="perturbation levels (default 0.5,1,2)")
    p.add_argument("--perturb-seeds", type=int, default=1, help="perturbation seeds per level (0, 1, ...)")
    p.add_argument("--modality", type=_csv(str), help="perturbed modality or comma list (default all)")


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


def _train_arms(args: argparse.Namespace) -> tuple[type, Any, RecDataset, dict[str, list[Any]], dict[str, list[TrainResult]]]:
    import yaml

    from mirrorgrad_jax.cli import load_dataset
    from mirrorgrad_jax.models import build_config, get_model

    unknown = [a for a in args.arms if a not in ARM_LABELS]
    if unknown or not args.arms:
        raise SystemExit(f"--arms: unknown arm(s) {unknown}; allowed: {', '.join(ARM_LABELS)}")
    unknown_kinds = [k for k in args.kinds if k not in PERTURBATIONS]
    if unknown_kinds:
        raise SystemExit(f"--kinds: unknown perturbation(s) {unknown_kinds}; allowed: {', '.join(PERTURBATIONS)}")
    try:
        model_cls = get_model(args.model)
        options = {}
        for item in args.set or []:
            name, _, value = item.partition("=")
            if not value:
                raise SystemExit(f"--set expects key=value, got {item!r}")
            options[name] = yaml.safe_load(value)  # as `mirrorgrad train --set`
        model_config = build_config(model_cls, options)
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        configs = [
            TrainConfig(
                epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, learning_rate=lr,
                optimizer=args.optimizer, valid_metric=args.valid_metric, seed=args.seed + i,
            )
            for i in range(args.seeds)
        ]  # fmt: skip
        mgs = {
            arm: MGConfig(enabled=arm != "none", alpha1=args.alpha1, alpha2=args.alpha2, beta=args.beta, apply_to="gradient" if arm == "none" else arm)
            for arm in args.arms
        }
    except (TypeError, ValueError) as err:
        raise SystemExit(f"invalid configuration: {err}") from err
    dataset = load_dataset(args.dataset, verbose=not args.quiet)
    print(dataset.summary())
    missing = [m for m in (args.modality or []) if m not in dataset.features]
    if missing:
        raise SystemExit(f"--modality: {dataset.name} has no modality {missing}; available: {', '.join(dataset.features)}")
    log = None if args.quiet else print
    params: dict[str, list[Any]] = {}
    results: dict[str, list[TrainResult]] = {}
    for arm, mg in mgs.items():
        label = ARM_LABELS[arm]
        params[label], results[label] = [], []
        for cfg in configs:
            t0 = time.perf_counter()
            trained = train_and_measure(model_cls, model_config, dataset, cfg, mg, log=log)
            params[label].append(trained.params)
            results[label].append(trained.result)
            print(
                f"trained {label} (seed {cfg.seed}, {args.optimizer}, lr {lr:g}): best epoch {trained.result.best_epoch}, "
                f"test {args.valid_metric} {trained.result.test_at_best.get(args.valid_metric, float('nan')):.4f} "
                f"({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    return model_cls, model_config, dataset, params, results


def _run_command(args: argparse.Namespace, name: str, *, robustness: bool, flatness: bool, slices_2d: bool) -> int:
    started = time.perf_counter()
    model_cls, model_config, dataset, params, results = _train_arms(args)
    os.makedirs(args.out_dir, exist_ok=True)
    figure = os.path.join(args.out_dir, f"{name}.png")
    comparison = compare_runs(
        model_cls, model_config, dataset, params,
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
