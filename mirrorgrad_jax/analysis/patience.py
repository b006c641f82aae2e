"""Replaying the early-stopping rule on a finished run's per-epoch history.

The reference protocol reports the test result at the best-validation epoch and stops
once the validation metric has not improved for ``patience + 1`` consecutive epochs.
Whether a method "helps" under that protocol mixes its effect on the model with its
effect on WHEN training stops: one plain run that peaks early, dips and is killed by
the patience rule moves the mean as much as a real improvement would. To report the
two apart, train every arm to a fixed epoch budget without early stopping, then replay
the rule afterwards at several patiences; ``patience=None`` selects the best
validation epoch over the whole budget (no early stop at all).

The replay runs :class:`~mirrorgrad_jax.evaluation.EarlyStopping` itself over the
recorded validation values, in the order and with the stop test of
:func:`mirrorgrad_jax.train.train`, so it selects exactly what a live run with that
patience would have (tested against live runs in ``tests/test_patience.py``): an epoch
improves only if its validation value rounded to 4 decimals is STRICTLY greater than
the best so far (ties keep the earlier epoch), and the run stops after the epoch that
makes the ``patience + 1``-th consecutive non-improving one, but never before
``min_epochs`` epochs have run.

Example::

    result = train(VBPR, VBPRConfig(), ds, TrainConfig(epochs=300, patience=300, valid_metric="recall@20"), mg)
    sweep = sweep_patience(result.history, "recall@20", (5, 10, 20, 50, None))
    sweep[20].test["recall@20"], sweep[20].stop_epoch   # what patience 20 would have reported

    paired_difference({999: 0.30, 1000: 0.31}, {999: 0.32, 1000: 0.30})   # MG minus plain, by seed
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mirrorgrad_jax.errors import UserInputError
from mirrorgrad_jax.evaluation import EarlyStopping

__all__ = [
    "DEFAULT_PATIENCES",
    "PairedDifference",
    "Selection",
    "paired_difference",
    "patience_label",
    "replay_early_stopping",
    "sweep_patience",
]

DEFAULT_PATIENCES: tuple[int | None, ...] = (5, 10, 20, 50, None)
"""The patiences the sweep reports; ``None`` is the best epoch over the whole budget."""


def patience_label(patience: int | None) -> str:
    """``"5"``, ``"20"``, ... or ``"none"`` for ``None`` (table headers, JSON keys)."""
    return "none" if patience is None else str(patience)


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the early-stopping rule at one patience selects from a history.

    Attributes:
      patience: the patience replayed; ``None``: no early stop (best over the budget).
      min_epochs: no stop was allowed before this many epochs.
      best_epoch: the selected (best-validation) epoch, 0-based as in the history.
      stop_epoch: the last epoch the rule would have trained (0-based).
      epochs_run: ``stop_epoch + 1``, as :attr:`TrainResult.epochs_run`.
      stopped_early: True when the rule stopped before the history ended; False when
        it ran to the end of the history (the budget, or a NaN stop of the live run).
      valid: the validation metrics of ``best_epoch``.
      test: the test metrics of ``best_epoch`` (as :attr:`TrainResult.test_at_best`).
    """

    patience: int | None
    min_epochs: int
    best_epoch: int
    stop_epoch: int
    epochs_run: int
    stopped_early: bool
    valid: dict[str, float]
    test: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def _check_patience(patience: int | None, name: str = "patience") -> None:
    if patience is None:
        return
    if isinstance(patience, bool) or not isinstance(patience, int):
        raise UserInputError(f"{name} must be a non-negative int or None (no early stop), got {patience!r}")
    if patience < 0:
        raise UserInputError(f"{name} must be >= 0 or None (no early stop), got {patience}")


def _check_history(history: Sequence[Mapping[str, Any]], metric: str) -> None:
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise UserInputError(f"history must be a list of per-epoch dicts (TrainResult.history), got {type(history).__name__}")
    if len(history) == 0:
        raise UserInputError("history is empty: there is no epoch to select")
    for index, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise UserInputError(f"history[{index}] must be a dict, got {type(row).__name__}")
        missing = [k for k in ("epoch", "valid", "test") if k not in row]
        if missing:
            raise UserInputError(f"history[{index}] lacks {missing}; each row needs 'epoch', 'valid' and 'test' (TrainResult.history)")
        if row["epoch"] != index:
            raise UserInputError(
                f"history[{index}] is epoch {row['epoch']!r}, expected {index}: a replay needs every epoch from 0, in order"
            )
        if metric not in row["valid"]:
            raise UserInputError(
                f"history[{index}]['valid'] has no {metric!r}; available: {sorted(row['valid'])}"
            )
        value = row["valid"][metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise UserInputError(f"history[{index}]['valid'][{metric!r}] must be a number, got {value!r}")


def replay_early_stopping(
    history: Sequence[Mapping[str, Any]],
    metric: str,
    patience: int | None,
    min_epochs: int = 0,
) -> Selection:
    """The epoch that early stopping at ``patience`` would have selected, and where it stops.

    Exactly the trainer's rule: per epoch, :meth:`EarlyStopping.update` (strict
    improvement of the value rounded to 4 decimals), and a stop after the epoch at
    which more than ``patience`` consecutive epochs did not improve, unless fewer than
    ``min_epochs`` epochs have run (then training goes on, the count keeps growing or
    resets on an improvement, and the rule is checked again after the next epoch).

    Args:
      history: per-epoch rows ``{"epoch", "valid": {metric: value}, "test": {...}, ...}``
        as :attr:`TrainResult.history`, every epoch from 0 in order; train it with a
        patience at least as long as the budget so that it does not stop by itself.
      metric: the validation key to select on, e.g. ``"recall@20"``.
      patience: the rule's patience; ``None`` selects the best epoch over the whole
        history and never stops early.
      min_epochs: no stop before this many epochs (``TrainConfig.min_epochs``).

    Returns:
      The :class:`Selection`. When the rule would not have stopped within the
      history, ``stop_epoch`` is its last epoch and ``stopped_early`` is False.

    Raises:
      UserInputError (a ValueError): an empty or malformed history, a metric missing
        from it, a negative patience or min_epochs.
    """
    _check_patience(patience)
    _check_patience(min_epochs, "min_epochs")
    _check_history(history, metric)
    stopper = EarlyStopping(metric=metric, patience=patience if patience is not None else len(history))
    best_row = history[0]
    for row in history:
        epoch = int(row["epoch"])
        if stopper.update(row["valid"][metric], epoch):
            best_row = row
        if patience is not None and stopper.should_stop and epoch + 1 >= min_epochs:
            stop_epoch, stopped_early = epoch, epoch < len(history) - 1
            break
    else:
        stop_epoch, stopped_early = len(history) - 1, False
    return Selection(
        patience=patience,
        min_epochs=min_epochs,
        best_epoch=stopper.best_epoch,
        stop_epoch=stop_epoch,
        epochs_run=stop_epoch + 1,
        stopped_early=stopped_early,
        valid=dict(best_row["valid"]),
        test=dict(best_row["test"]),
    )


def sweep_patience(
    history: Sequence[Mapping[str, Any]],
    metric: str,
    patiences: Iterable[int | None] = DEFAULT_PATIENCES,
    min_epochs: int = 0,
) -> dict[int | None, Selection]:
    """:func:`replay_early_stopping` at each patience, keyed by patience (``None`` included).

    Raises:
      UserInputError: no patiences, a repeated one, or any error of the replay.
    """
    patiences = list(patiences)
    if not patiences:
        raise UserInputError("patiences is empty: give at least one patience (or None)")
    if len(set(patiences)) != len(patiences):
        raise UserInputError(f"patiences has repeats: {patiences}")
    return {p: replay_early_stopping(history, metric, p, min_epochs) for p in patiences}


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Treatment minus control on the same seeds (e.g. MG minus plain).

    Attributes:
      seeds: the seeds both arms have, ascending.
      differences: per seed, ``treatment - control``, in ``seeds`` order.
      mean: their mean.
      std: their sample standard deviation (n - 1; 0.0 for one seed).
      minimum, maximum: their range.
      positive: how many are > 0.
    """

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    std: float
    minimum: float
    maximum: float
    positive: int

    @property
    def n(self) -> int:
        """The number of paired seeds."""
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def paired_difference(control: Mapping[int, float], treatment: Mapping[int, float]) -> PairedDifference:
    """``treatment[seed] - control[seed]`` over the seeds both have, with mean and spread.

    Pairing by seed compares runs with the same initialisation and data order, so the
    seed-to-seed variation common to both arms cancels.

    Args:
      control: seed -> value of the control arm (plain training).
      treatment: seed -> value of the treatment arm (MG).

    Returns:
      The :class:`PairedDifference`; seeds present in only one arm are left out.

    Raises:
      UserInputError: when no seed is in both, or a value is not a finite number.
    """
    for name, arm in (("control", control), ("treatment", treatment)):
        for seed, value in arm.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserInputError(f"{name}[{seed!r}] must be a finite number, got {value!r}")
    seeds = tuple(sorted(set(control) & set(treatment)))
    if not seeds:
        raise UserInputError(
            f"no seed is in both arms (control seeds {sorted(control)}, treatment seeds {sorted(treatment)})"
        )
    diffs = tuple(float(treatment[s]) - float(control[s]) for s in seeds)
    return PairedDifference(
        seeds=seeds,
        differences=diffs,
        mean=statistics.fmean(diffs),
        std=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        minimum=min(diffs),
        maximum=max(diffs),
        positive=sum(d > 0 for d in diffs),
    )
