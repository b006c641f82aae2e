"""Robustness of trained recommenders to feature changes: evaluation under perturbation.

The paper's claim is that Mirror Gradient keeps recommendations stable when item
features are noisy or edited after training. This module measures that for a trained
state (:func:`~mirrorgrad_jax.train.trained.trained_state`: the parameters plus whatever a
checkpoint keeps, such as the training cache of stale-evaluation models):

* :func:`evaluate_params`: rank with a trained state on a (possibly perturbed)
  dataset; constants derived from features are rebuilt from the given features;
* :func:`robustness_curve` / :func:`summarise`: the metric retention (perturbed /
  clean) over perturbation levels and seeds;
* :class:`Shift` / :data:`SHIFT_PRESETS`: a kind of perturbation with levels (and
  modalities) of its own, e.g. the ``"extreme"`` ladder of issue 28.

Stale-evaluation models (SLMRec, MMGCN, GRCN, DualGNN, MVGAE with ``stale_eval``) rank
with the representation cached by their last training forward. On the clean data
:func:`evaluate_params` uses that cache, so it reproduces the training run's numbers
exactly. A cache cannot see new features, though, so under a perturbation the
representation is recomputed from the perturbed features with the trained parameters,
and retention is measured against the same recomputation on the clean features (level
0 gives exactly 1; staleness is not counted as instability).

The MG-off/on comparison (training arms, one table and one figure for levels shared by
every kind) is in :mod:`mirrorgrad_jax.analysis.comparison`, training methods side by side
under :class:`Shift` ladders in :mod:`mirrorgrad_jax.analysis.shifts`, the figures in
:mod:`mirrorgrad_jax.analysis.plots`.

Example::

    run = train_and_measure(VBPR, VBPRConfig(), ds, TrainConfig(epochs=30), MGConfig(enabled=False))
    rows = robustness_curve(VBPR, VBPRConfig(), ds, run.state, "noise", [0.5, 1, 2], seeds=[0, 1])
    print(summarise(rows))
"""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from typing import Any, Literal, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.errors import CheckpointError
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, RankingEvaluator
from mirrorgrad_jax.analysis.flatness import check_params_fit
from mirrorgrad_jax.models import CHECKPOINTED, check_ready_to_rank
from mirrorgrad_jax.analysis.perturb import FRACTION_KINDS, PERTURBATIONS, apply_perturbation, check_level
from mirrorgrad_jax.train.checkpoint import flatten_arrays, unflatten_like
from mirrorgrad_jax.train.trained import fit_trained_state

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_METRICS",
    "FEATURE_TABLES",
    "ShiftNotReached",
    "SHIFT_PRESETS",
    "Shift",
    "evaluate_params",
    "metric_cutoffs",
    "robustness_curve",
    "summarise",
]

DEFAULT_METRICS = ("recall@20", "ndcg@20")

#: What a shift does to a model's fine-tuned feature tables (parameters built from the features).
FEATURE_TABLES = ("trained", "shifted")


class ShiftNotReached(UserWarning):
    """A shift changed the features but none of the first users' scores, so its retention is 1.

    Attributes:
      model: the model's class name.
      shift: the shifted dataset's name (``"<name>~<kind><level>"`` for a perturbation).
      modalities: the modalities the shift changed.
      reason: why it reached no score.
    """

    def __init__(self, model: str, shift: str, modalities: tuple[str, ...], reason: str):
        super().__init__(f"{model}: shifting {', '.join(modalities)} ({shift}) changes none of its scores, so its retention is 1: {reason}")
        self.model, self.shift, self.modalities, self.reason = model, shift, modalities, reason

    def __reduce__(self) -> tuple[Any, tuple[str, str, tuple[str, ...], str]]:
        # Rebuilt from its fields (a worker process's warning turned error reaches its parent pickled).
        return type(self), (self.model, self.shift, self.modalities, self.reason)


def metric_cutoffs(metrics: Sequence[str]) -> tuple[int, ...]:
    """The ranking cutoffs that ``metrics`` (``"recall@20"``...) need."""
    cutoffs = set()
    for metric in metrics:
        name, _, k = metric.partition("@")
        if name not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"metrics must look like 'recall@20' or 'ndcg@10', got {metric!r}")
        cutoffs.add(int(k))
    return tuple(sorted(cutoffs))


class StateEvaluator:
    """Ranks one split with a trained state, on the clean or a perturbed copy of a dataset.

    The model is rebuilt on every dataset it is asked about, so feature-derived
    constants follow that dataset's features; the compiled scorer is reused because the
    constants keep their shapes. ``recompute=True`` ranks a stale-evaluation model by
    recomputing its representation (see the module docstring); other models ignore it.

    Some models fine-tune their raw feature tables (BM3, FREEDOM, LATTICE, MGCN, SMORE,
    PGL: the reference's ``from_pretrained(..., freeze=False)``): those are parameters,
    initialised from the features, and training replaces them. ``feature_tables`` says
    what a shift does to them:

    * ``"trained"`` (the default, and what loading the trained weights into a model built
      on new features does): they keep their trained values, so the shift reaches such a
      model only through the constants built from the features (FREEDOM's and LATTICE's
      kNN graphs); BM3 reads its features through nothing else, and no shift changes it.
    * ``"shifted"``: the shift is added to them, ``trained + (built on shifted - built on
      clean)``, every parameter whose initial value depends on the features: what the
      model learned on top of the features is kept, the features under it move.

    A shift that changes the features but none of the first 64 users' scores raises a
    :class:`ShiftNotReached` warning naming it, since the retention it gives is exactly 1
    (every shifted dataset is checked: a small shift can miss where a larger one reaches).
    """

    def __init__(
        self,
        model_cls: type,
        model_config: Any,
        dataset: RecDataset,
        split: str,
        topk: Sequence[int],
        *,
        eval_batch_size: int = 4096,
        seed: int = 0,
        feature_tables: Literal["trained", "shifted"] = "trained",
    ):
        if feature_tables not in FEATURE_TABLES:
            raise ValueError(f"feature_tables must be one of {FEATURE_TABLES}, got {feature_tables!r}")
        self.model_cls, self.dataset, self.split, self.seed = model_cls, dataset, split, seed
        self.feature_tables = feature_tables
        self.configs = {False: model_config}
        if getattr(model_config, "stale_eval", False):
            self.configs[True] = dataclasses.replace(model_config, stale_eval=False)
        self.evaluator = RankingEvaluator(dataset.num_items, dataset.train, dataset.split(split), topk=topk, user_block=eval_batch_size)
        self._built: dict[bool, tuple[Any, Any, Any, Any]] = {}

    def _clean(self, recompute: bool) -> tuple[Any, Any, Any, Any]:
        """(model, graphdef, constants, scores_fn) of the clean dataset, built once per mode."""
        if recompute not in self._built:
            model = self.model_cls(self.dataset, self.configs[recompute], rngs=nnx.Rngs(params=self.seed))
            graphdef, _, consts = nnx.split(model, CHECKPOINTED, ...)

            def scores_fn(state, users):
                trained, constants = state
                return nnx.merge(graphdef, trained, constants, copy=True).scores(users)

            self._built[recompute] = (model, graphdef, consts, scores_fn)
        return self._built[recompute]

    def _rebuilt(self, dataset: RecDataset, recompute: bool) -> tuple[Any, dict[str, Any]]:
        """The constants of the model built on ``dataset``, and ``name -> shift`` of each
        parameter whose initial value moved from the clean build's (the same seed, so only
        the features can move it)."""
        model, _, consts, _ = self._clean(recompute)
        if dataset is self.dataset:
            return consts, {}
        clean = self.dataset
        if dataset.num_items != clean.num_items or dataset.num_users != clean.num_users or not all(
            np.array_equal(dataset.split(s), clean.split(s)) for s in ("train", self.split)
        ):
            raise ValueError(f"dataset {dataset.name!r} does not have the splits of {clean.name!r}; only its features may differ")
        rebuilt = self.model_cls(dataset, self.configs[recompute], rngs=nnx.Rngs(params=self.seed))
        _, _, perturbed = nnx.split(rebuilt, CHECKPOINTED, ...)
        check_params_fit(consts, perturbed, f"the constants of {self.model_cls.__name__} on {clean.name!r}")
        before, after = flatten_arrays(nnx.state(model, nnx.Param)), flatten_arrays(nnx.state(rebuilt, nnx.Param))
        moved = {name: np.asarray(after[name]) - np.asarray(before[name]) for name in before if not np.array_equal(before[name], after[name])}
        return perturbed, moved

    def evaluate(self, state: Any, dataset: RecDataset | None = None, *, recompute: bool = False, round_to: int | None = 4) -> dict[str, float]:
        """Metrics of the trained ``state`` on ``dataset`` (default: the clean one).

        Raises:
          ValueError: a state that does not fit the model, a dataset with other splits,
            or a stale-evaluation model whose cache is empty (and ``recompute`` is off).
        """
        recompute = recompute and True in self.configs
        model, graphdef, clean_consts, scores_fn = self._clean(recompute)
        what = f"the trained state of {self.model_cls.__name__} on {self.dataset.name!r}"
        try:
            trained = fit_trained_state(model, state, what, ignore_cache=recompute)
        except CheckpointError as err:
            raise ValueError(str(err)) from None
        consts, moved = self._rebuilt(self.dataset if dataset is None else dataset, recompute)
        fitted = _add(trained, moved) if moved and self.feature_tables == "shifted" else trained
        if not recompute and model.ranks_with_training_cache():
            check_ready_to_rank(nnx.merge(graphdef, fitted, consts))
        if dataset is not None and dataset is not self.dataset:
            self._check_reached(dataset, scores_fn, (trained, clean_consts), (fitted, consts), moved)
        return self.evaluator.evaluate(scores_fn, (fitted, consts), round_to=round_to)

    def _check_reached(self, dataset: RecDataset, scores_fn: Any, clean: Any, shifted: Any, moved: dict[str, Any]) -> None:
        """Warns when a shift of the features leaves the first users' scores unchanged."""
        changed = tuple(
            sorted(m for m in self.dataset.features if m in dataset.features and not np.array_equal(self.dataset.features[m], dataset.features[m]))
        )
        if not changed:
            return
        users = jnp.arange(min(64, self.dataset.num_users))
        before = np.asarray(scores_fn(clean, users))
        if not np.array_equal(before, np.asarray(scores_fn(shifted, users))):
            return
        why = "it ranks without them (BM3, for one, scores with its id embeddings alone)"
        if moved and self.feature_tables == "trained":
            if not np.array_equal(before, np.asarray(scores_fn((_add(shifted[0], moved), shifted[1]), users))):
                why = "its feature tables are trained parameters, kept as trained (feature_tables='shifted' adds the shift to them)"
        warnings.warn(ShiftNotReached(self.model_cls.__name__, dataset.name, changed, why), stacklevel=3)


def _add(state: Any, moved: Mapping[str, Any]) -> Any:
    """``state`` with ``moved[name]`` added to each array it names."""
    arrays = flatten_arrays(state)
    arrays.update({name: arrays[name] + np.asarray(moved[name]).astype(arrays[name].dtype) for name in moved})
    return unflatten_like(state, arrays, "the trained state")


def evaluate_params(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    state: Any,
    split: str = "test",
    topk: Sequence[int] = DEFAULT_TOPK,
    *,
    eval_batch_size: int = 4096,
    round_to: int | None = 4,
    seed: int = 0,
    recompute: bool = False,
    feature_tables: Literal["trained", "shifted"] = "trained",
) -> dict[str, float]:
    """Full-ranking metrics of a trained state on ``dataset``.

    The model is rebuilt on ``dataset``, so every constant derived from features
    (VBPR's feature matrix, item-item graphs...) uses the given, possibly perturbed,
    features; the trained state is plugged in unchanged. On the data it was trained on
    this reproduces the trainer's numbers exactly, stale-evaluation models included.

    Args:
      model_cls: a :class:`~mirrorgrad_jax.models.Recommender` class.
      model_config: its config.
      dataset: the data to rank on.
      state: the trained state (:func:`~mirrorgrad_jax.train.trained.trained_state`, e.g. from
        :func:`~mirrorgrad_jax.analysis.comparison.load_trained_state`); for models without
        saved state, the ``nnx.Param`` state alone.
      split: ``"valid"`` or ``"test"``.
      topk: ranking cutoffs.
      eval_batch_size: users per evaluation block.
      round_to: decimals of each metric (4, as the trainer); ``None`` for full precision.
      seed: seeds the throw-away initial parameters of the rebuilt model.
      recompute: stale-evaluation models recompute their representation instead of
        using the cached one (see the module docstring).
      feature_tables: ``"trained"`` or ``"shifted"``: what a shift does to fine-tuned
        feature tables (:class:`StateEvaluator`).

    Returns:
      ``{'recall@5': ..., ..., 'map@50': ...}``.

    Raises:
      ValueError: a state of another structure or shape than the model's.
    """
    evaluator = StateEvaluator(model_cls, model_config, dataset, split, topk, eval_batch_size=eval_batch_size, seed=seed, feature_tables=feature_tables)
    return evaluator.evaluate(state, recompute=recompute, round_to=round_to)


def robustness_curve(
    model_cls: type,
    model_config: Any,
    clean_dataset: RecDataset,
    state: Any,
    kind: str,
    levels: Sequence[float],
    seeds: Sequence[int],
    *,
    modality: str | Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    split: str = "test",
    eval_batch_size: int = 4096,
    feature_tables: Literal["trained", "shifted"] = "trained",
) -> list[dict[str, Any]]:
    """Metrics under a perturbation, for every level and seed, relative to the clean metrics.

    Metrics are computed at full precision (no rounding), so level 0 gives a retention
    of exactly 1.0. Stale-evaluation models are ranked by recomputing their
    representation, on the clean and on the perturbed data alike (module docstring).

    Args:
      model_cls: the model's class.
      model_config: its config.
      clean_dataset: the dataset the state was trained on.
      state: the trained state.
      kind: a perturbation of :func:`~mirrorgrad_jax.analysis.perturb.apply_perturbation`.
      levels: its levels (see :data:`~mirrorgrad_jax.analysis.perturb.PERTURBATIONS`).
      seeds: perturbation seeds; each (level, seed) is one perturbed dataset.
      modality: perturbed modality (or modalities); ``None`` = all.
      metrics: which metrics to record, e.g. ``("recall@20", "ndcg@20")``.
      split: the ranked split.
      eval_batch_size: users per evaluation block.
      feature_tables: ``"trained"`` or ``"shifted"``: what a shift does to fine-tuned
        feature tables (:class:`StateEvaluator`).

    Returns:
      One row per (level, seed): ``{"kind", "level", "seed", "metrics": {m: value},
      "clean": {m: clean value}, "retention": {m: value / clean value}}`` (retention is
      NaN where the clean value is 0).
    """
    metrics = tuple(metrics)
    evaluator = StateEvaluator(
        model_cls, model_config, clean_dataset, split, metric_cutoffs(metrics), eval_batch_size=eval_batch_size, feature_tables=feature_tables
    )
    return perturbation_rows(evaluator, state, kind, levels, seeds, modality=modality, metrics=metrics)


def perturbation_rows(
    evaluator: StateEvaluator,
    state: Any,
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
    clean_all = evaluator.evaluate(state, recompute=True, round_to=None)
    clean = {m: clean_all[m] for m in metrics}
    rows = []
    for level in levels:
        for seed in seeds:
            perturbed = apply_perturbation(clean_dataset, kind, float(level), seed=int(seed), modality=modality)
            result = evaluator.evaluate(state, perturbed, recompute=True, round_to=None)
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


# ---------------------------------------------------------------------------------------
# Shifts with levels of their own, and training methods side by side.
# ---------------------------------------------------------------------------------------

#: Levels a kind is measured at when none are given: the strengths of the first study for
#: ``noise`` and ``campaign``, a fifth, half and all of the items for the fraction kinds.
DEFAULT_LEVELS: Mapping[str, tuple[float, ...]] = {
    kind: (0.2, 0.5, 1.0) if kind in FRACTION_KINDS else (0.5, 1.0, 2.0) for kind in PERTURBATIONS
}


@dataclasses.dataclass(frozen=True)
class Shift:
    """One perturbation kind measured at several levels, on some modalities.

    Attributes:
      kind: a key of :data:`~mirrorgrad_jax.analysis.perturb.PERTURBATIONS`.
      levels: its levels (:func:`~mirrorgrad_jax.analysis.perturb.check_level`), in the
        order they are measured.
      modality: the perturbed modalities; ``None`` = all of them.
    """

    kind: str
    levels: tuple[float, ...]
    modality: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {self.kind!r}; available: {', '.join(PERTURBATIONS)}")
        levels = tuple(check_level(self.kind, level) for level in self.levels)
        if not levels:
            raise ValueError(f"no levels given for {self.kind!r}")
        object.__setattr__(self, "levels", levels)
        if self.modality is not None:
            modality = (self.modality,) if isinstance(self.modality, str) else tuple(self.modality)
            object.__setattr__(self, "modality", modality or None)

    def describe(self) -> str:
        """``"shuffle (image): level = fraction of items ..."``: what the kind's level means, and where."""
        where = f" ({', '.join(self.modality)})" if self.modality else ""
        return f"{self.kind}{where}: level = {PERTURBATIONS[self.kind]}"


#: Named ladders of shifts. ``"extreme"`` is the study of shifts to the extreme: Gaussian
#: noise up to 8 feature stds; a campaign of one mean row norm on 20, 50 and 100 % of the
#: items; and a modality replaced, on the same shares of items, by zeros, by its mean
#: vector, or by other items' vectors (a shuffle). ``"default"`` is what the robustness
#: command measures without options.
SHIFT_PRESETS: Mapping[str, tuple[Shift, ...]] = {
    "default": (Shift("noise", (0.5, 1.0, 2.0)), Shift("campaign", (0.5, 1.0, 2.0))),
    "extreme": (
        Shift("noise", (0.5, 1.0, 2.0, 4.0, 8.0)),
        Shift("campaign-items", (0.2, 0.5, 1.0)),
        Shift("missing", (0.2, 0.5, 1.0)),
        Shift("missing-mean", (0.2, 0.5, 1.0)),
        Shift("shuffle", (0.2, 0.5, 1.0)),
    ),
}
