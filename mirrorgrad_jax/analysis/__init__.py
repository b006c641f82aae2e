"""Measuring what Mirror Gradient does: perturbed features, flatness, robustness, MG-off/on comparisons, patience replay.

* :mod:`.perturb`: item-feature shifts (Gaussian noise, swapped or shuffled items, a
  campaign edit, a modality missing and filled with zeros or its mean), pure functions of a dataset;
* :mod:`.flatness`: the top Hessian eigenvalue, SAM-style and random sharpness, 1-D and
  2-D loss-landscape slices of a trained model;
* :mod:`.robustness`: a trained state evaluated on perturbed features, retention curves,
  shift ladders (:class:`.Shift`);
* :mod:`.comparison`: train MG off and on, then one table and one figure for both;
* :mod:`.shifts`: training methods (plain, MG, SAM, ASAM, GNP) compared under shift ladders;
* :mod:`.plots`: the figures (matplotlib, optional);
* :mod:`.patience`: early stopping replayed on recorded histories, paired differences.
"""

from mirrorgrad_jax.analysis.comparison import Comparison, TrainedRun, compare_runs, load_trained_state, train_and_measure, train_arms
from mirrorgrad_jax.analysis.flatness import LossSlice, hessian_top_eigenvalue, loss_slice_1d, loss_slice_2d, model_train_loss, sharpness
from mirrorgrad_jax.analysis.patience import PairedDifference, Selection, paired_difference, replay_early_stopping, sweep_patience
from mirrorgrad_jax.analysis.perturb import PERTURBATIONS, PerturbResult, apply_perturbation
from mirrorgrad_jax.analysis.plots import plot_comparison, plot_robustness, plot_slices
from mirrorgrad_jax.analysis.robustness import SHIFT_PRESETS, Shift, evaluate_params, robustness_curve, summarise
from mirrorgrad_jax.analysis.shifts import compare_shifts, train_methods

__all__ = [
    "PERTURBATIONS",
    "SHIFT_PRESETS",
    "Comparison",
    "LossSlice",
    "PairedDifference",
    "PerturbResult",
    "Selection",
    "Shift",
    "TrainedRun",
    "apply_perturbation",
    "compare_runs",
    "compare_shifts",
    "evaluate_params",
    "hessian_top_eigenvalue",
    "load_trained_state",
    "loss_slice_1d",
    "loss_slice_2d",
    "model_train_loss",
    "paired_difference",
    "plot_comparison",
    "plot_robustness",
    "plot_slices",
    "replay_early_stopping",
    "robustness_curve",
    "sharpness",
    "summarise",
    "sweep_patience",
    "train_and_measure",
    "train_arms",
    "train_methods",
]
