"""Training MG off and on, and comparing the results: one table and one figure.

* :func:`train_and_measure` / :func:`load_trained_state`: train with the project's
  trainer and get the best-validation trained state back from its ``best.ckpt``;
* :func:`train_arms`: one model trained once per arm (e.g. no MG, MG on gradients, MG
  on updates) and per train config (e.g. per seed);
* :func:`compare_runs`: ONE markdown table and ONE figure for several labelled runs
  (clean metrics, ``lambda_max``, sharpness, retention under perturbations).

Example::

    runs = {label: train_and_measure(VBPR, VBPRConfig(), ds, cfg, mg).state for label, mg in arms.items()}
    print(compare_runs(VBPR, VBPRConfig(), ds, runs, path="cmp.png").table)
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.errors import CheckpointError, NoEpochFinished
from mirrorgrad_jax.analysis.flatness import LossSlice, hessian_top_eigenvalue, loss_slice_1d, loss_slice_2d, model_train_loss, sharpness
from mirrorgrad_jax.analysis.perturb import PERTURBATIONS
from mirrorgrad_jax.analysis.plots import plot_comparison
from mirrorgrad_jax.analysis.robustness import DEFAULT_METRICS, StateEvaluator, metric_cutoffs, perturbation_rows, summarise
from mirrorgrad_jax.train import MethodConfig, MGConfig, TensorBoardRun, TrainConfig, TrainResult, load_trained_model, resolved_model_config, train, trained_state

__all__ = [
    "Comparison",
    "TrainedRun",
    "compare_runs",
    "load_trained_state",
    "train_and_measure",
    "train_arms",
]

def _params_of(state: Any) -> Any:
    """The ``nnx.Param`` part of a trained state (a plain parameter state passes through)."""
    return nnx.filter_state(state, nnx.Param) if isinstance(state, nnx.State) else state


class TrainedRun(NamedTuple):
    """What :func:`train_and_measure` returns.

    Attributes:
      state: the best-validation trained state (parameters plus the saved
        non-parameter state; :func:`~mirrorgrad_jax.train.trained.trained_state`).
      result: the trainer's :class:`~mirrorgrad_jax.train.TrainResult`.
      checkpoint: the ``best.ckpt`` path, or ``None`` when it lived in a temporary folder.
    """

    state: Any
    result: TrainResult
    checkpoint: str | None


def load_trained_state(model_cls: type, model_config: Any, dataset: RecDataset, checkpoint_path: str | os.PathLike) -> nnx.State:
    """The trained state stored in a trainer checkpoint (``best.ckpt`` or ``last.ckpt``).

    Args:
      model_cls: the class of the model the checkpoint was trained with.
      model_config: its config.
      dataset: a dataset with the training data's sizes.
      checkpoint_path: the checkpoint folder.

    Returns:
      The trained state as host (numpy) arrays, as the checkpoint holds them, ready for the
      robustness and flatness tools (which place them on the device inside their jitted calls).

    Raises:
      ValueError: a checkpoint of another model or config, or arrays that do not fit.
    """
    try:
        loaded = load_trained_model(checkpoint_path, dataset)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    if loaded.model_cls is not model_cls:
        raise ValueError(f"{checkpoint_path} holds a {loaded.model_cls.name!r} model, not {model_cls.name!r}")
    mg = loaded.meta.get("meta", {}).get("mg", {})
    if mg:  # resolved as the trainer resolved it (MVGAE's KL weight follows MG)
        model_config = resolved_model_config(model_cls, model_config, MGConfig(**mg))
    if loaded.model_config != model_config:
        raise ValueError(f"{checkpoint_path} does not fit {model_cls.__name__} with {model_config}: it was trained with {loaded.model_config}")
    return trained_state(loaded.model)


def train_and_measure(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    train_config: TrainConfig = TrainConfig(),
    mg: MGConfig = MGConfig(),
    *,
    method: MethodConfig = MethodConfig(),
    checkpoint_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    events: TensorBoardRun | None = None,
) -> TrainedRun:
    """Trains with :func:`mirrorgrad_jax.train.train` and returns the best-validation trained state.

    Args:
      model_cls: the model's class.
      model_config: its config.
      dataset: the data.
      train_config: trainer settings.
      mg: Mirror Gradient settings.
      method: another training method (SAM, ASAM, the gradient-norm penalty) with MG off;
        the default trains plainly or with MG, as ``mg`` says.
      checkpoint_dir: where the trainer keeps ``best.ckpt``/``last.ckpt``; ``None``
        uses a temporary folder that is removed afterwards.
      log: progress printer (``None`` for silence).
      events: a TensorBoard run that gets the run's curves, settings and result (see
        :func:`mirrorgrad_jax.train.train`); the caller closes it.

    Returns:
      A :class:`TrainedRun`.

    Raises:
      NoEpochFinished: when no epoch finished (no best checkpoint was written); a
        ``RuntimeError`` too.
    """

    def run(folder: str) -> TrainedRun:
        result = train(model_cls, model_config, dataset, train_config, mg, method=method, checkpoint_dir=folder, log=log, events=events)
        best = os.path.join(folder, "best.ckpt")
        if not os.path.exists(best):
            raise NoEpochFinished(f"training stopped before any epoch finished ({result.stop_reason}); there is nothing to measure")
        state = load_trained_state(model_cls, model_config, dataset, best)
        return TrainedRun(state, result, best if checkpoint_dir is not None else None)

    if checkpoint_dir is not None:
        return run(os.fspath(checkpoint_dir))
    with tempfile.TemporaryDirectory(prefix="mirrorgrad-") as folder:
        return run(folder)


def train_arms(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    train_configs: Sequence[TrainConfig],
    arms: Mapping[str, MGConfig],
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[Any]], dict[str, list[TrainResult]]]:
    """Trains every arm (label -> MG settings) once per train config (e.g. one per seed).

    Returns:
      ``(states, results)``: label -> list of trained states, label -> list of results.
    """
    states: dict[str, list[Any]] = {}
    results: dict[str, list[TrainResult]] = {}
    for label, mg in arms.items():
        states[label], results[label] = [], []
        for cfg in train_configs:
            t0 = time.perf_counter()
            trained = train_and_measure(model_cls, model_config, dataset, cfg, mg, log=log)
            states[label].append(trained.state)
            results[label].append(trained.result)
            metric = cfg.valid_metric
            print(
                f"trained {label} (seed {cfg.seed}, {cfg.optimizer}, lr {cfg.learning_rate:g}): best epoch {trained.result.best_epoch}, "
                f"test {metric} {trained.result.test_at_best.get(metric, float('nan')):.4f} ({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    return states, results


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
      curves: label -> :func:`~mirrorgrad_jax.analysis.robustness.summarise` output (empty without robustness).
      slices: label -> 1-D :class:`~mirrorgrad_jax.analysis.flatness.LossSlice` of its first run.
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


def _row(cells: Sequence[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _head(header: Sequence[str]) -> list[str]:
    """A markdown table's first two lines: the header row and the ``|---|`` rule."""
    return [_row(header), "|" + "|".join(["---"] * len(header)) + "|"]


def _cell(values: Sequence[float], fmt: str) -> str:
    """``mean ± std`` of the values that are numbers; ``(k of n)`` when some are NaN (a
    retention whose clean metric is 0), so the cell says what its mean covers."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    mean = statistics.fmean(finite)
    text = format(mean, fmt) if len(finite) == 1 else f"{format(mean, fmt)} ± {format(statistics.stdev(finite), fmt)}"
    return text if len(finite) == len(values) else f"{text} ({len(finite)} of {len(values)})"


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
    feature_tables: str = "trained",
) -> Comparison:
    """One markdown table and one figure comparing several labelled training runs.

    Columns: the clean test metrics; with ``flatness``, ``lambda_max`` of the training
    loss (:func:`~mirrorgrad_jax.analysis.flatness.hessian_top_eigenvalue`) and the SAM and random
    sharpness at relative radius ``rho``, all on the same fixed training batches
    (:func:`~mirrorgrad_jax.analysis.flatness.model_train_loss` with ``seed``); with
    ``robustness``, the retention of ``metrics[0]`` under each kind and level. Cells are
    ``mean ± std`` over a label's runs (and perturbation seeds).

    The figure has one retention panel per kind, a panel of 1-D loss slices along the
    same random direction seed (normalised per run), and with ``slices_2d`` one contour
    panel per label; slices use each label's first run.

    Args:
      model_cls: the class of the model all runs trained.
      model_config: its config.
      dataset: the clean dataset they trained on.
      runs: label -> trained state (:func:`~mirrorgrad_jax.train.trained.trained_state`, e.g.
        ``TrainedRun.state``), or a list of them (e.g. one per seed).
      path: PNG to write; ``None`` writes no figure.
      metrics: clean metrics shown; the first is the one whose retention is shown.
      robustness: measure retention.
      kinds: perturbation kinds, each measured as :func:`~mirrorgrad_jax.analysis.robustness.robustness_curve` does.
      levels: perturbation levels.
      perturb_seeds: perturbation seeds; each (level, seed) is one perturbed dataset.
      modality: perturbed modality (or modalities); ``None`` = all.
      flatness: measure ``lambda_max``, sharpness and slices.
      rho: relative sharpness radius.
      num_directions: random directions for the random sharpness.
      power_iterations: Hessian-vector products of the power iteration.
      flatness_batches: how many fixed training batches the flatness loss averages.
      batch_size: the size of those batches.
      slices_2d: add 2-D slice panels.
      seed: seeds the flatness batches, the power iteration and the directions.
      log: progress printer.
      feature_tables: ``"trained"`` or ``"shifted"``: what a shift does to fine-tuned feature
        tables (:class:`~mirrorgrad_jax.analysis.robustness.StateEvaluator`).

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
    evaluator = StateEvaluator(model_cls, model_config, dataset, "test", metric_cutoffs(metrics), feature_tables=feature_tables)
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
    for label, state_list in grouped.items():
        t0 = time.perf_counter()
        cols: dict[str, list[float]] = {name: [] for name, _ in columns}
        rows: list[dict[str, Any]] = []
        for index, state in enumerate(state_list):
            clean = evaluator.evaluate(state)
            params = _params_of(state)
            for m in metrics:
                cols[m].append(clean[m])
            if flatness:
                # One loss for every run (the same batches, one compilation), unless the runs
                # carry state of their own the loss reads (frozen random tensors, caches).
                own_state = len(jax.tree.leaves(state)) != len(jax.tree.leaves(params))
                if loss_fn is None or own_state:
                    loss_fn = model_train_loss(model_cls, model_config, dataset, state, seed=seed, num_batches=flatness_batches, batch_size=batch_size)
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
                    for row in perturbation_rows(evaluator, state, kind, levels, perturb_seeds, modality=modality, metrics=metrics):
                        cols[f"{kind} {row['level']:g}"].append(row["retention"][metrics[0]])
                        rows.append(row)
        numbers[label] = cols
        if robustness:
            curves[label] = summarise(rows)
        say(f"measured {label!r} ({len(state_list)} run(s)) in {time.perf_counter() - t0:.1f}s")

    header = ["run", "n"] + [name for name, _ in columns]
    lines = _head(header)
    for label, cols in numbers.items():
        lines.append(_row([label, str(len(grouped[label]))] + [_cell(cols[name], fmt) for name, fmt in columns]))
    if robustness:
        lines.append("")
        lines.append(f"Retention columns: test {metrics[0]} under the perturbation / clean test {metrics[0]} (1 = unaffected).")
        lines.extend(f"- {kind}: level = {PERTURBATIONS[kind]}" for kind in kinds)
    table = "\n".join(lines)

    figure = None
    if path is not None:
        figure = plot_comparison(curves, slices, slices2, metrics[0], path)
    return Comparison(table, figure, numbers, curves, slices)
