"""Training: the run configs, the optimizer, the jitted epoch engine, the loop, checkpoints and grids.

* :mod:`.config`: :class:`MGConfig`, :class:`MethodConfig` (SAM, ASAM, the gradient-norm
  penalty) and :class:`TrainConfig`;
* :mod:`.optimizer`: torch's optimizers in optax, MG around them, the per-epoch learning rate;
* :mod:`.engine`: the compiled steps and epoch scans of one run;
* :mod:`.loop`: :func:`train`, one run with evaluation, early stopping and checkpoints;
* :mod:`.checkpoint`: orbax folders of arrays and JSON, written atomically, never pickles;
* :mod:`.trained`: a trained model back from a checkpoint, and its evaluation;
* :mod:`.grid`: every combination of a config's grids for every seed, selected on validation;
* :mod:`.events`: TensorBoard event files of a run (curves, settings, result), and reading them back;
* :mod:`.progress`: the progress bars over epochs and runs.
"""

from mirrorgrad_jax.errors import TrainingError
from mirrorgrad_jax.train.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointFile,
    flatten_arrays,
    load_checkpoint,
    open_checkpoint,
    save_checkpoint,
    unflatten_like,
)
from mirrorgrad_jax.train.config import LAYOUT_FIELDS, METHODS, MethodConfig, MGConfig, TrainConfig, fit_topk, training_method
from mirrorgrad_jax.train.engine import EpochEngine
from mirrorgrad_jax.train.events import INSTALL_TENSORBOARD, TensorBoardRun, check_event_writer, event_run_folders, metric_tag, read_scalars
from mirrorgrad_jax.train.grid import check_grid, format_mean_std, run_grid, summary_table
from mirrorgrad_jax.train.loop import TrainResult, resolved_model_config, train
from mirrorgrad_jax.train.optimizer import FIRST_BATCH_GROUP, build_optimizer, optimizer_learning_rate, set_learning_rate
from mirrorgrad_jax.train.trained import TrainedModel, check_trained_on, evaluate_model, load_trained_model, trained_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointFile",
    "EpochEngine",
    "FIRST_BATCH_GROUP",
    "INSTALL_TENSORBOARD",
    "LAYOUT_FIELDS",
    "METHODS",
    "MGConfig",
    "MethodConfig",
    "TensorBoardRun",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "TrainingError",
    "build_optimizer",
    "check_event_writer",
    "check_grid",
    "check_trained_on",
    "evaluate_model",
    "event_run_folders",
    "fit_topk",
    "flatten_arrays",
    "format_mean_std",
    "load_checkpoint",
    "load_trained_model",
    "metric_tag",
    "open_checkpoint",
    "optimizer_learning_rate",
    "read_scalars",
    "resolved_model_config",
    "run_grid",
    "save_checkpoint",
    "set_learning_rate",
    "summary_table",
    "train",
    "trained_state",
    "training_method",
    "unflatten_like",
]
