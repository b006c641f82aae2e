"""Measuring what Mirror Gradient does: perturbed features, flatness, robustness, MG-off/on comparisons, patience replay.

* :mod:`.perturb`: item-feature shifts (Gaussian noise, swapped items, a campaign edit,
  a missing modality), pure functions of a dataset;
* :mod:`.flatness`: the top Hessian eigenvalue, SAM-style and random sharpness, 1-D and
  2-D loss-landscape slices of a trained model;
* :mod:`.robustness`: a trained state evaluated on perturbed features, retention curves;
* :mod:`.comparison`: train MG off and on, then one table and one figure for both;
* :mod:`.plots`: the figures (matplotlib, optional);
* :mod:`.patience`: early stopping replayed on recorded histories, paired differences.
"""

from mirrorgrad_jax.analysis.comparison import Comparison, TrainedRun, compare_runs, load_trained_state, train_and_measure, train_arms
from mirrorgrad_jax.analysis.flatness import LossSlice, hessian_top_eigenvalue, loss_slice_1d, loss_slice_2d, model_train_loss, sharpness
from mirrorgrad_jax.analysis.patience import PairedDifference, Selection, paired_difference, replay_early_stopping, sweep_patience
from mirrorgrad_jax.analysis.perturb import PERTURBATIONS, PerturbResult, apply_perturbation
from mirrorgrad_jax.analysis.plots import plot_comparison, plot_robustness, plot_slices
from mirrorgrad_jax.analysis.robustness import evaluate_params, robustness_curve, summarise

__all__ = [
    "PERTURBATIONS",
    "Comparison",
    "LossSlice",
    "PairedDifference",
    "PerturbResult",
    "Selection",
    "TrainedRun",
    "apply_perturbation",
    "compare_runs",
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
]
