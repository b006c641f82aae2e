"""Trained models on disk: what a checkpoint keeps of a model, and how to get it back.

A trained model is its ``nnx.Param`` state plus the non-trainable state that cannot be
rebuilt from the dataset (:data:`~mirrorgrad_jax.models.CHECKPOINTED`): the
training cache of "stale" evaluation models, the per-epoch samples evaluation reads
(DualGNN's user-graph sample) and frozen random tensors (MMGCN's). Everything else
(features, graphs built from them) is a function of the dataset and the config and is
rebuilt, so a checkpoint ranks exactly as the training run did at that epoch.

Example::

    trained = load_trained_model("runs/combo0-seed999/best.ckpt", dataset)
    print(evaluate_model(trained.model, dataset)["test"]["recall@20"])
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
from flax import nnx

from mirrorgrad_jax.train.checkpoint import CheckpointFile, flatten_arrays, open_checkpoint, unflatten_like
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.errors import CheckpointError, UserInputError
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, RankingEvaluator, SplitEvaluators
from mirrorgrad_jax.models import CHECKPOINTED, Recommender, TrainingCache, build_config, check_ready_to_rank, get_model

__all__ = [
    "SAVED_STATE",
    "TrainedModel",
    "check_trained_on",
    "evaluate_model",
    "fit_trained_state",
    "load_trained_model",
    "model_arrays",
    "restore_model_arrays",
    "trained_state",
]

#: The non-parameter state a checkpoint keeps (``CHECKPOINTED`` without ``nnx.Param``).
SAVED_STATE = tuple(t for t in CHECKPOINTED if t is not nnx.Param)


def trained_state(model: nnx.Module) -> nnx.State:
    """What makes ``model`` trained: its ``nnx.Param`` state plus the saved non-parameter state.

    This is the unit the robustness and flatness tools take: for models without saved
    state (VBPR, BM3...) it is just the parameters.
    """
    return nnx.state(model, CHECKPOINTED)


def fit_trained_state(model: nnx.Module, state: Any, what: str, *, ignore_cache: bool = False) -> nnx.State:
    """``state`` (a :func:`trained_state`, possibly of a model built on other features) in the structure of ``model``'s.

    Args:
      model: a freshly built model; its own values are replaced.
      state: the trained state to fit.
      what: names the thing in error messages.
      ignore_cache: the model recomputes its representation (``stale_eval=False``):
        training-cache arrays are neither required nor used.

    Raises:
      CheckpointError: arrays missing, unexpected or of another shape.
    """
    reference = nnx.state(model, CHECKPOINTED)
    given = flatten_arrays(state)
    if ignore_cache:
        cache = flatten_arrays(nnx.state(model, TrainingCache))
        wanted = flatten_arrays(reference)
        given = {name: given.get(name, wanted[name]) if name in cache else given[name] for name in wanted if name in given or name in cache}
    return unflatten_like(reference, given, what)


def model_arrays(params: Any, model: nnx.Module) -> dict[str, dict[str, Any]]:
    """``{"params": ..., "model_state": ...}`` name -> array groups for :func:`~mirrorgrad_jax.train.checkpoint.save_checkpoint`.

    Args:
      params: the ``nnx.Param`` state to save (the trainer keeps it apart from the module).
      model: the module whose non-parameter saved state (``SAVED_STATE``) is current.
    """
    return {"params": flatten_arrays(params), "model_state": flatten_arrays(nnx.state(model, SAVED_STATE))}


def restore_model_arrays(model: nnx.Module, arrays: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """Writes checkpointed ``params`` and ``model_state`` groups into ``model`` in place.

    Raises:
      CheckpointError: when the arrays do not fit the model (names the first mismatch).
    """
    params = unflatten_like(nnx.state(model, nnx.Param), arrays.get("params", {}), f"{what}: the parameters")
    saved = nnx.state(model, SAVED_STATE)
    if jax.tree.leaves(saved) or arrays.get("model_state"):
        nnx.update(model, unflatten_like(saved, arrays.get("model_state", {}), f"{what}: the model state"))
    nnx.update(model, params)


@dataclasses.dataclass
class TrainedModel:
    """A model rebuilt from a trainer checkpoint.

    Attributes:
      model_cls: the registered model class.
      model_config: its config, as the run built it.
      model: the module with the checkpoint's parameters and state.
      epoch: the epoch the checkpoint was written after.
      meta: the checkpoint's metadata (configs, dataset fingerprint, metrics).
      path: the checkpoint folder.
      data_verified: whether the dataset was checked against the fingerprint of the
        training data the checkpoint records; False for checkpoints written before
        fingerprints were recorded, whose data could be checked by its sizes only.
    """

    model_cls: type[Recommender]
    model_config: Any
    model: Recommender
    epoch: int
    meta: dict[str, Any]
    path: str
    data_verified: bool = True

    @property
    def topk(self) -> tuple[int, ...]:
        return tuple(self.meta.get("meta", {}).get("train_config", {}).get("topk", DEFAULT_TOPK))

    @property
    def eval_batch_size(self) -> int:
        return int(self.meta.get("meta", {}).get("train_config", {}).get("eval_batch_size", 4096))


#: The parts of a checkpoint's data fingerprint that must match (the name may differ: a
#: moved folder, a perturbed copy); see :meth:`mirrorgrad_jax.data.RecDataset.fingerprint`.
_FINGERPRINT_KEYS = ("num_users", "num_items", "train", "valid", "test", "features", "splits_sha256")


def run_metadata(meta: Mapping[str, Any], where: Any) -> dict[str, Any]:
    """A trainer checkpoint's run metadata (``meta["meta"]``), its structure checked before anything reads it.

    A checkpoint may come from elsewhere: every field a reader uses is checked for its kind
    here, so a malformed one is one :class:`CheckpointError` instead of a ``KeyError`` or
    ``TypeError`` deep in a reader.

    Raises:
      CheckpointError: no run metadata, or a field of the wrong kind.
    """
    run = meta.get("meta") if isinstance(meta, Mapping) else None
    if not isinstance(run, dict) or "model" not in run or "dataset" not in run:
        raise CheckpointError(f"{where} is not a trainer checkpoint (no run metadata)")

    def bad(field: str, wanted: str) -> CheckpointError:
        return CheckpointError(f"{where}: its run metadata's {field} is not {wanted}")

    if not isinstance(run["model"], str):
        raise bad("model", "a model name")
    trained_on = run["dataset"]
    if not isinstance(trained_on, dict):
        raise bad("dataset", "a record of the training data")
    for key in ("num_users", "num_items"):
        value = trained_on.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad(f"dataset.{key}", "a positive whole number")
    if not isinstance(run.get("model_config", {}), dict):
        raise bad("model_config", "a mapping of settings")
    train_config = run.get("train_config", {})
    if not isinstance(train_config, dict):
        raise bad("train_config", "a mapping of settings")
    seed = train_config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad("train_config.seed", "a whole number")
    if not isinstance(run.get("dataset_source") or "", str):
        raise bad("dataset_source", "a dataset name or folder")
    return run


def check_trained_on(run: Mapping[str, Any], dataset: RecDataset, path: str) -> bool:
    """Checks that ``dataset`` is the data a checkpoint's run trained on.

    A checkpoint records a fingerprint of its training data (sizes, a hash of the split
    arrays, feature shapes). The features themselves may differ (a perturbed copy for the
    robustness tools); the splits and shapes may not. A checkpoint written before
    fingerprints were recorded has only the counts (and the train size and feature shapes),
    which are checked.

    Args:
      run: the checkpoint's run metadata (``meta["meta"]``).
      dataset: the data to rank.
      path: the checkpoint, for messages.

    Returns:
      True when the data was verified against the fingerprint, False when the checkpoint
      is older and only its counts could be checked.

    Raises:
      CheckpointError: the dataset differs from the training data.
    """
    trained_on = run["dataset"]
    name = trained_on.get("name", "?")
    if (dataset.num_users, dataset.num_items) != (trained_on["num_users"], trained_on["num_items"]):
        raise CheckpointError(
            f"{path} was trained on {name} ({trained_on['num_users']} users, {trained_on['num_items']} items) "
            f"but {dataset.name} has {dataset.num_users} users and {dataset.num_items} items"
        )
    mine = dataset.fingerprint()
    differ = []
    for key in _FINGERPRINT_KEYS:
        if key in trained_on and json.dumps(trained_on[key], sort_keys=True) != json.dumps(mine[key], sort_keys=True):
            if key == "splits_sha256":
                differ.append("train/valid/test split arrays (another split of the data?)")
            elif key == "features":
                differ.append(f"feature shapes ({trained_on[key]} trained, {mine[key]} here)")
            else:
                differ.append(f"{key} rows ({trained_on[key]} trained, {mine[key]} here)")
    if differ:
        where = run.get("dataset_source") or name
        raise CheckpointError(
            f"{path} was trained on {name} ({where}), but {dataset.name} ({dataset.source or 'built in memory'}) is other data: "
            f"its {'; '.join(differ)} differ. Evaluate it on the data the run trained on"
        )
    return "splits_sha256" in trained_on


def load_trained_model(
    path: str | os.PathLike | CheckpointFile,
    dataset: RecDataset,
    *,
    model_overrides: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Rebuilds the model a trainer checkpoint (``best.ckpt`` or ``last.ckpt``) holds.

    The model is built on ``dataset`` with the run's config and seed, then the
    checkpoint's parameters and saved state are written into it. The arrays are read
    once, after their stored shapes were checked against the model's (a checkpoint that
    declares other arrays is refused before anything is allocated); an optimizer state in
    the checkpoint is not read.

    Args:
      path: the checkpoint folder, or one already opened with
        :func:`~mirrorgrad_jax.train.checkpoint.open_checkpoint` (its metadata is not
        read again).
      dataset: the data to rank; it must be the training data (checked against the
        fingerprint the checkpoint records: :func:`check_trained_on`), though its
        features may differ, e.g. a perturbed copy.
      model_overrides: config fields to change when rebuilding (e.g. ``{"stale_eval":
        False}`` to recompute the representation from the dataset's features).

    Raises:
      CheckpointError: not a trainer checkpoint, other data than the training data, or
        arrays that do not fit the model.
    """
    ckpt = path if isinstance(path, CheckpointFile) else open_checkpoint(path)
    where = ckpt.path
    run = run_metadata(ckpt.meta, where)
    verified = check_trained_on(run, dataset, where)
    try:
        model_cls = get_model(run["model"])
        config = build_config(model_cls, {**run.get("model_config", {}), **dict(model_overrides or {})})
    except UserInputError as err:
        raise CheckpointError(f"{where}: {err}") from None
    seed = int(run.get("train_config", {}).get("seed", 0))
    model = model_cls(dataset, config, rngs=nnx.Rngs(params=seed))
    arrays = ckpt.read_arrays(expected=model_arrays(nnx.state(model, nnx.Param), model))
    restore_model_arrays(model, arrays, where)
    try:
        check_ready_to_rank(model)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return TrainedModel(model_cls, config, model, int(ckpt.meta.get("epoch", -1)), ckpt.meta, where, verified)


def evaluate_model(
    model: Recommender,
    dataset: RecDataset,
    splits: Sequence[str] = ("valid", "test"),
    *,
    topk: Sequence[int] = DEFAULT_TOPK,
    eval_batch_size: int = 4096,
    round_to: int | None = 4,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics of ``model`` (as it is) on each split, as the trainer computes them.

    Raises:
      ValueError: a stale-evaluation model whose training cache was never filled.
    """
    check_ready_to_rank(model)
    graphdef, state = nnx.split(model)

    def scores_fn(state, users):
        return nnx.merge(graphdef, state, copy=True).scores(users)

    if not splits:
        return {}
    evaluators = [RankingEvaluator(dataset.num_items, dataset.train, dataset.split(s), topk=topk, user_block=eval_batch_size) for s in splits]
    return dict(zip(splits, SplitEvaluators(*evaluators).evaluate(scores_fn, state, round_to=round_to)))
