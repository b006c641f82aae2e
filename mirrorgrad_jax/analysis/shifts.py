"""Training methods side by side under shifts of the item features, up to the extreme.

Issue 28 asks what happens to each way of seeking flat minima (plain training, MG, SAM,
ASAM, the gradient-norm penalty) when the features change far beyond the paper's tests:
noise up to 8 standard deviations, a campaign on every item, a modality replaced by
zeros, its mean or another item's vector. This module holds that study:

* :func:`train_methods`: one model per training method and train config, each at its
  best-validation state;
* :func:`compare_shifts`: ONE table and ONE figure of several labelled runs under shifts
  (:class:`~mirrorgrad_jax.analysis.robustness.Shift`), each kind with levels (and
  modalities) of its own, e.g. the
  :data:`~mirrorgrad_jax.analysis.robustness.SHIFT_PRESETS` ``"extreme"`` ladder; with
  flatness, the top Hessian eigenvalue per method;
* :func:`plot_shift_comparison`: its figure.

It sits above :mod:`~mirrorgrad_jax.analysis.comparison` (the MG-off/on comparison, whose
training and clean columns it reuses) and :mod:`~mirrorgrad_jax.analysis.robustness`
(evaluation under one perturbation).

Example::

    methods = {"plain": (MGConfig(enabled=False), MethodConfig()), "SAM": (MGConfig(enabled=False), MethodConfig(name="sam"))}
    states, _ = train_methods(VBPR, VBPRConfig(), ds, [TrainConfig(epochs=30)], methods)
    print(compare_shifts(VBPR, VBPRConfig(), ds, states, SHIFT_PRESETS["extreme"], path="extreme.png", flatness=True).table)
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax

# The package's own table cell and parameter filter, shared with the MG-off/on comparison.
from mirrorgrad_jax.errors import NoEpochFinished
from mirrorgrad_jax.analysis.comparison import Comparison, _cell, _head, _params_of, _row, compare_runs, train_and_measure
from mirrorgrad_jax.analysis.plots import contour_levels, draw_robustness, draw_slice_2d, draw_slices_1d, save_figure
from mirrorgrad_jax.analysis.flatness import loss_slice_2d, model_train_loss
from mirrorgrad_jax.analysis.perturb import check_level
from mirrorgrad_jax.analysis.robustness import DEFAULT_METRICS, Shift, StateEvaluator, metric_cutoffs, perturbation_rows, summarise
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig, TrainResult, training_method

__all__ = ["compare_shifts", "paired_differences", "plot_shift_comparison", "train_methods"]


def train_methods(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    train_configs: Sequence[TrainConfig],
    methods: Mapping[str, tuple[MGConfig, MethodConfig]],
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[Any]], dict[str, list[TrainResult]]]:
    """Trains every method (label -> its MG and method settings) once per train config.

    Each run is :func:`mirrorgrad_jax.train.train` with a temporary checkpoint folder; its
    best-validation trained state is read back from ``best.ckpt``
    (:func:`~mirrorgrad_jax.analysis.comparison.train_and_measure`), as
    :func:`~mirrorgrad_jax.analysis.comparison.train_arms` does for MG settings alone.
    One line per run says what it reached.

    Args:
      model_cls: the model's class.
      model_config: its config.
      dataset: the data.
      train_configs: trainer settings, e.g. one per seed.
      methods: label -> ``(MGConfig, MethodConfig)``: plain training is MG off and method
        ``"none"``, MG is MG on and ``"none"``, SAM / ASAM / GNP are MG off and their name.
      log: the trainer's progress printer (``None`` for silence).

    Returns:
      ``(states, results)``: label -> list of trained states, label -> list of results.

    Raises:
      ConfigError: MG enabled together with another method.
      NoEpochFinished: a run that finished no epoch (a ``RuntimeError`` too).
    """
    for mg, method in methods.values():
        training_method(mg, method)  # every contradiction is reported before any training
    states: dict[str, list[Any]] = {}
    results: dict[str, list[TrainResult]] = {}
    for label, (mg, method) in methods.items():
        states[label], results[label] = [], []
        for cfg in train_configs:
            started = time.perf_counter()
            try:
                run = train_and_measure(model_cls, model_config, dataset, cfg, mg, method=method, log=log)
            except NoEpochFinished as err:
                raise NoEpochFinished(f"{label}: {err}") from None
            result = run.result
            states[label].append(run.state)
            results[label].append(result)
            metric = cfg.valid_metric
            print(
                f"trained {label} (seed {cfg.seed}, {training_method(mg, method)}, {cfg.optimizer}, lr {cfg.learning_rate:g}): "
                f"best epoch {result.best_epoch}, test {metric} {result.test_at_best.get(metric, float('nan')):.4f} "
                f"({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
    return states, results


def _column_format(name: str, metrics: Sequence[str]) -> str:
    if name in metrics:
        return ".4f"
    if name == "lambda_max":
        return ".4g"
    return ".3g" if name.startswith("sharpness") else ".3f"


def paired_differences(
    numbers: Mapping[str, Mapping[str, Sequence[float]]],
    columns: Sequence[str],
    *,
    runs: int,
    baseline: str | None = None,
    fmt: Callable[[str], str] = lambda _name: ".4f",
) -> str:
    """A markdown table of each label minus ``baseline``, paired by run.

    ``numbers`` is :attr:`Comparison.numbers`: label -> column -> values, one per run, or
    for a retention column one per run and perturbation seed, run by run (the runs of
    every label in the same order: run ``r`` of each label trained with the same seed, and
    each perturbation seed gives every label the same perturbed dataset). Per run, the
    difference is the label's value minus the baseline's, averaged over the perturbation
    seeds (a NaN one, from a clean metric of 0, left out; a run with none left is left out of
    its cell); a cell is the mean ± sample standard deviation of those per-run differences,
    then ``(k/n)``: how many of the ``n`` runs lie above the baseline. Pairing removes
    what the runs share (a seed's split of luck, a perturbed dataset), which the spreads of
    the absolute table include: a difference can stand clear of zero while both absolute
    cells overlap.

    Args:
      numbers: label -> column -> values.
      columns: the columns to difference (each label's lists must have the baseline's lengths).
      runs: the number of runs per label; a column holds ``runs`` values, or ``runs``
        times the number of perturbation seeds.
      baseline: the label subtracted; the first label by default.
      fmt: the number format of a column's cells.

    Returns:
      The table; empty when there is no other label.

    Raises:
      ValueError: an unknown baseline, or a column whose number of values is not a
        multiple of ``runs`` or differs from the baseline's (runs that cannot be paired).
    """
    labels = list(numbers)
    baseline = labels[0] if baseline is None else baseline
    if baseline not in numbers:
        raise ValueError(f"baseline {baseline!r} is not one of the labels {labels}")
    others = [label for label in labels if label != baseline]
    if not others:
        return ""
    lines = _head(["run", *columns])
    for label in others:
        cells = []
        for name in columns:
            mine, base = list(numbers[label][name]), list(numbers[baseline][name])
            if len(mine) != len(base):
                raise ValueError(f"{label!r} has {len(mine)} values of {name!r} and {baseline!r} {len(base)}: the runs cannot be paired")
            if runs < 1 or len(base) % runs:
                raise ValueError(f"{name!r} has {len(base)} values, not a multiple of {runs} runs")
            per_run = len(base) // runs
            diffs = []
            for i in range(0, len(base), per_run):  # a NaN pair (a clean metric of 0) is left out of its run's mean
                pairs = [m - b for m, b in zip(mine[i : i + per_run], base[i : i + per_run]) if not math.isnan(m - b)]
                diffs.append(statistics.fmean(pairs) if pairs else math.nan)
            finite = [d for d in diffs if not math.isnan(d)]
            if not finite:
                cells.append("n/a")
                continue
            f = fmt(name)
            text = f"{format(statistics.fmean(finite), '+' + f)}"
            if len(finite) > 1:
                text += f" ± {format(statistics.stdev(finite), f)}"
            cells.append(f"{text} ({sum(d > 0 for d in finite)}/{len(finite)})")
        lines.append(_row([f"{label} - {baseline}", *cells]))
    return "\n".join(lines)


def compare_shifts(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    runs: Mapping[str, Any],
    shifts: Sequence[Shift],
    *,
    path: str | os.PathLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    perturb_seeds: Sequence[int] = (0,),
    flatness: bool = False,
    rho: float = 0.05,
    num_directions: int = 10,
    power_iterations: int = 20,
    flatness_batches: int = 4,
    batch_size: int = 2048,
    slices_2d: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    feature_tables: str = "trained",
) -> Comparison:
    """One markdown table and one figure of labelled runs under shifts with levels of their own.

    The clean metrics and, with ``flatness``, ``lambda_max``, SAM and random sharpness and
    the 1-D loss slices are measured by
    :func:`~mirrorgrad_jax.analysis.comparison.compare_runs` (same batches, keys and
    columns); then every :class:`Shift` is measured at its own levels and modalities, as
    :func:`robustness_curve` does: the retention of ``metrics[0]`` per kind and level, one
    column each. Cells are ``mean ± std`` over a label's runs (and perturbation seeds).

    The figure (:func:`plot_shift_comparison`) has one retention panel per shift (one line
    per label, the spread over runs and perturbation seeds as error bars), with
    ``flatness`` a 1-D slice panel and a ``lambda_max`` panel, and with ``slices_2d`` one
    contour panel per label.

    Args:
      model_cls: the class of the model all runs trained.
      model_config: its config.
      dataset: the clean dataset they trained on.
      runs: label -> trained state, or a list of them (e.g. one per seed).
      shifts: the shifts; one kind at most once.
      path: PNG to write; ``None`` writes no figure.
      metrics: clean metrics shown; the first is the one whose retention is shown.
      perturb_seeds: perturbation seeds; each (level, seed) is one perturbed dataset.
      flatness: measure ``lambda_max``, sharpness and slices.
      rho: relative sharpness radius.
      num_directions: random directions for the random sharpness.
      power_iterations: Hessian-vector products of the power iteration.
      flatness_batches: how many fixed training batches the flatness loss averages.
      batch_size: the size of those batches.
      slices_2d: also 2-D loss slices (with ``flatness``), along the same key as
        :func:`~mirrorgrad_jax.analysis.comparison.compare_runs` would use.
      seed: seeds the flatness batches, the power iteration and the directions.
      log: progress printer.
      feature_tables: ``"trained"`` or ``"shifted"``: what a shift does to fine-tuned feature
        tables (:class:`~mirrorgrad_jax.analysis.robustness.StateEvaluator`).

    Returns:
      A :class:`~mirrorgrad_jax.analysis.comparison.Comparison` (``curves``: label ->
      :func:`summarise` rows of every shift).

    Raises:
      ValueError: no runs, a kind listed twice, a level out of range (or a shuffle of a
        single item), or a modality the dataset does not have.
    """
    say = log or (lambda _m: None)
    metrics = tuple(metrics)
    shifts = list(shifts)
    kinds = [s.kind for s in shifts]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise ValueError(f"perturbation kind(s) {repeated} listed more than once; give each kind one set of levels")
    for shift in shifts:
        for level in shift.levels:
            check_level(shift.kind, level, dataset.num_items)
        for name in shift.modality or ():
            if name not in dataset.features:
                raise ValueError(f"{dataset.name} has no modality {name!r}; available: {', '.join(dataset.features)}")
    if not runs:
        raise ValueError("no runs to compare")
    base = compare_runs(
        model_cls, model_config, dataset, runs, path=None, metrics=metrics, robustness=False, flatness=flatness, rho=rho,
        num_directions=num_directions, power_iterations=power_iterations, flatness_batches=flatness_batches,
        batch_size=batch_size, slices_2d=False, seed=seed, log=log, feature_tables=feature_tables,
    )  # fmt: skip
    grouped = {label: list(v) if isinstance(v, (list, tuple)) else [v] for label, v in runs.items()}
    numbers = {label: dict(cols) for label, cols in base.numbers.items()}
    columns = list(next(iter(numbers.values())))
    retention_columns = list(dict.fromkeys(f"{s.kind} {level:g}" for s in shifts for level in s.levels))
    columns += retention_columns
    curves: dict[str, list[dict[str, Any]]] = {}
    evaluator = StateEvaluator(model_cls, model_config, dataset, "test", metric_cutoffs(metrics), feature_tables=feature_tables) if shifts else None
    for label, states in grouped.items():
        started = time.perf_counter()
        cols = numbers[label]
        cols.update({name: [] for name in retention_columns})
        rows: list[dict[str, Any]] = []
        for state in states:
            for shift in shifts:
                for row in perturbation_rows(evaluator, state, shift.kind, shift.levels, perturb_seeds, modality=shift.modality, metrics=metrics):
                    cols[f"{shift.kind} {row['level']:g}"].append(row["retention"][metrics[0]])
                    rows.append(row)
        if shifts:
            curves[label] = summarise(rows)
            say(f"measured {label!r} under {len(shifts)} shift(s) in {time.perf_counter() - started:.1f}s")
    slices2 = {}
    if flatness and slices_2d:
        k_slice = jax.random.split(jax.random.key(seed), 3)[2]  # compare_runs' slice key
        for label, states in grouped.items():
            loss_fn = model_train_loss(model_cls, model_config, dataset, states[0], seed=seed, num_batches=flatness_batches, batch_size=batch_size)
            slices2[label] = loss_slice_2d(loss_fn, _params_of(states[0]), key=k_slice)

    lines = _head(["run", "n", *columns])
    for label, cols in numbers.items():
        cells = [_cell(cols[name], _column_format(name, metrics)) for name in columns]
        lines.append(_row([label, str(len(grouped[label])), *cells]))
    if shifts:
        lines.append("")
        lines.append(
            f"Retention columns: test {metrics[0]} under the perturbation / clean test {metrics[0]} (1 = unaffected); "
            f"mean ± sample standard deviation over the runs and {len(perturb_seeds)} perturbation seed(s) each."
        )
        lines.extend(f"- {shift.describe()}" for shift in shifts)
    sizes = {len(states) for states in grouped.values()}
    if len(grouped) > 1 and len(sizes) == 1:
        paired = [metrics[0], *(["lambda_max"] if flatness else []), *retention_columns]
        lines += ["", f"Paired by run (the runs of every label in the same order, each perturbation seed the same data): "
                  f"each label minus {next(iter(grouped))}, mean ± sample standard deviation over the runs, (k/n) = runs above.", ""]
        lines.append(paired_differences(numbers, paired, runs=sizes.pop(), fmt=lambda name: ".4g" if name == "lambda_max" else ".4f"))
    table = "\n".join(lines)

    figure = None
    if path is not None:
        lambda_max = {label: cols["lambda_max"] for label, cols in numbers.items()} if flatness else {}
        figure = plot_shift_comparison(curves, shifts, base.slices, slices2, lambda_max, metrics[0], path)
    return Comparison(table, figure, numbers, curves, base.slices)


#: Panels in one row of :func:`plot_shift_comparison`; more wrap onto further rows.
_PANELS_PER_ROW = 4

#: Axis label of each kind's level in :func:`plot_shift_comparison`.
_LEVEL_AXIS = {
    "noise": "noise sigma (x per-dimension feature std)",
    "swap": "fraction of items given another item's features",
    "campaign": "campaign shift (x mean feature-row norm), on 20% of items",
    "missing": "fraction of items with features set to zero",
    "campaign-items": "fraction of items given the campaign shift",
    "missing-mean": "fraction of items with features set to the mean",
    "shuffle": "fraction of items with features shuffled among them",
}


def plot_shift_comparison(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    shifts: Sequence[Shift],
    slices: Mapping[str, Any],
    slices2: Mapping[str, Any],
    lambda_max: Mapping[str, Sequence[float]],
    metric: str,
    path: str | os.PathLike,
) -> str | None:
    """The figure of :func:`compare_shifts`: retention per shift, slices and ``lambda_max`` in one PNG.

    Panels, left to right and in rows of four: one per shift (retention of ``metric`` against the level, one
    line per label, error bars = std over runs and perturbation seeds); the 1-D loss
    slices; ``lambda_max`` per label (bar = mean, error bar = std, dots = the runs); one
    2-D slice per label.

    Args:
      curves: label -> :func:`summarise` rows.
      shifts: the shifts, in panel order.
      slices: label -> 1-D :class:`~mirrorgrad_jax.analysis.flatness.LossSlice` (may be empty).
      slices2: label -> 2-D slice (may be empty).
      lambda_max: label -> ``lambda_max`` of each run (empty: no panel).
      metric: the metric whose retention is drawn.
      path: the PNG file (folders are created).

    Returns:
      The path written, or ``None`` when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless, as every figure of mirrorgrad_jax.analysis.plots
    import matplotlib.pyplot as plt

    drawn = [s for s in shifts if any(r["kind"] == s.kind and r["metric"] == metric for rows in curves.values() for r in rows)]
    panels = len(drawn) + (1 if slices else 0) + (1 if lambda_max else 0) + len(slices2)
    if panels == 0:
        return None
    columns = min(panels, _PANELS_PER_ROW)
    rows = math.ceil(panels / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.8 * columns, 4 * rows), squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    for shift in drawn:
        ax = axes.pop(0)
        draw_robustness(ax, curves, shift.kind, metric)
        ax.set_xlabel(_LEVEL_AXIS.get(shift.kind, "perturbation level"))
        ax.set_title(f"{shift.kind}" + (f" ({', '.join(shift.modality)})" if shift.modality else ""))
    if slices:
        draw_slices_1d(axes.pop(0), slices)
    if lambda_max:
        ax = axes.pop(0)
        labels = list(lambda_max)
        for x, label in enumerate(labels):
            values = [v for v in lambda_max[label] if not math.isnan(v)]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(x, statistics.fmean(values), yerr=std, capsize=4, alpha=0.6, color=f"C{x % 10}")  # the label's line colour
            ax.plot([x] * len(values), values, "k.", markersize=5)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylabel("lambda_max of the training loss")
        ax.set_title("top Hessian eigenvalue")
        ax.grid(alpha=0.3, axis="y")
    levels = contour_levels(slices2) if slices2 else None
    for label, s in slices2.items():
        draw_slice_2d(axes.pop(0), f"2-D loss slice: {label}", s, fig, levels)
    return save_figure(fig, path)
