"""The interface every recommender answers, and the variable types a model holds.

A model is a Flax NNX module built from a dataset and a typed config. The trainer
sees only this interface and never special-cases a model:

* ``loss(batch, key) -> scalar``: ``batch`` is an int32 ``(3, B)`` array
  ``[users; positives; negatives]`` (``(2, B)`` when ``uses_negatives`` is False);
* ``scores(users) -> (len(users), num_items)`` for full ranking;
* ``pre_epoch(rng)``: optional host-side refresh before each epoch (graph sampling);
  it may replace non-trainable variables with arrays of the SAME shapes, held as
  :class:`EpochSample` (checkpoints keep them: evaluation may read them).

Optional parts of the contract, each with a default that changes nothing:

* ``trainable = False``: the model needs no training (ItemKNNCBF); the trainer runs
  one evaluation, builds no optimizer and refuses Mirror Gradient with a clear message.
* ``first_batch_params`` / ``first_batch_loss(batch, key)``: parameters that get a
  gradient only from the FIRST training forward of each epoch (LATTICE rebuilds its
  item graph there and reuses it detached afterwards). The trainer computes that
  forward with ``first_batch_loss``; on every other step they get a zero gradient
  (PyTorch 1.13's ``zero_grad``, the default) or are skipped with their optimizer state
  (PyTorch >= 2.0, ``TrainConfig.zero_grad = "none"``).
* ``config_for_training(config, setup)``: a classmethod resolving settings that depend
  on the training run (:class:`TrainingSetup`: whether MG is on, its ``beta``); MVGAE's
  reference takes its KL weight from MG's ``beta``.
* ``ranks_with_training_cache()``: True when ``scores`` reads a
  :class:`TrainingCache` written by ``loss`` ("stale" evaluation); evaluating such a
  model before its cache was filled is an error, not a ranking.

Trainable parameters are ``nnx.Param``; constants (features, graphs) are
:class:`Constant` variables, which the optimizer never sees. A model may READ a
:class:`TrainingCache` that an earlier step of the same epoch wrote: the trainer
carries the cache from step to step.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "CHECKPOINTED",
    "Constant",
    "EpochSample",
    "FrozenRandom",
    "Recommender",
    "TrainingCache",
    "TrainingSetup",
    "check_ready_to_rank",
]


class TrainingSetup(NamedTuple):
    """What a model may need to know of the run that trains it (see :meth:`Recommender.config_for_training`).

    Attributes:
      mg_enabled: the run trains with Mirror Gradient.
      mg_beta: MG's mirror interval.
    """

    mg_enabled: bool
    mg_beta: int


class Constant(nnx.Variable):
    """A non-trainable array held by a model (features, graph edges, frozen tensors)."""


class EpochSample(Constant):
    """A constant redrawn by ``pre_epoch`` (sampled graphs, neighbour lists).

    Checkpoints keep these, because evaluation may read them (DualGNN's and DRAGON's
    user-graph sample of the epoch).
    """


class FrozenRandom(Constant):
    """A random tensor drawn at construction and never trained (MMGCN's id/preference tables).

    Unlike feature-derived constants it cannot be rebuilt from the dataset, so
    checkpoints keep it.
    """


class TrainingCache(nnx.Variable):
    """An output of the training forward pass kept for evaluation ("stale" evaluation).

    Several reference models rank items with the representation cached by the LAST
    training forward of the epoch instead of recomputing it. A model reproduces that by
    assigning to a ``TrainingCache`` variable inside ``loss``; the trainer carries the
    value out of its jitted epoch and writes it back before evaluating.
    """


class Recommender(nnx.Module):
    """Base class of every model; see the module docstring for the contract."""

    name: ClassVar[str] = "recommender"
    config_class: ClassVar[type] = object
    uses_negatives: ClassVar[bool] = True
    multimodal: ClassVar[bool] = False
    #: False: no training at all (one evaluation, no optimizer, no MG).
    trainable: ClassVar[bool] = True
    #: Top-level attribute names of the parameters that get gradient only from
    #: ``first_batch_loss`` (see the module docstring); empty for most models.
    first_batch_params: ClassVar[tuple[str, ...]] = ()

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def first_batch_loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """The loss of the first training batch of an epoch; ``loss`` unless the model says otherwise."""
        return self.loss(batch, key)

    def ranks_with_training_cache(self) -> bool:
        """Whether ``scores`` reads a :class:`TrainingCache` filled by training (stale evaluation)."""
        return False

    def scores(self, users: jax.Array) -> jax.Array:
        raise NotImplementedError

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Host-side refresh before each epoch; nothing by default."""

    @classmethod
    def config_for_training(cls, config: Any, setup: TrainingSetup) -> Any:
        """The config a run described by ``setup`` trains this model with; ``config`` unchanged by default.

        For models whose reference takes a setting from the training set-up (MVGAE's KL
        weight is MG's ``beta``). The trainer resolves it once, through
        :func:`mirrorgrad_jax.train.resolved_model_config`, and records the result.
        """
        return config

    def num_trainable_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(self, nnx.Param))))


#: What a trained model is besides its dataset: everything a checkpoint keeps. Plain
#: :class:`Constant` values are functions of the dataset and config and are rebuilt.
CHECKPOINTED = (nnx.Param, TrainingCache, EpochSample, FrozenRandom)


def check_ready_to_rank(model: Recommender) -> None:
    """Refuses to rank with a stale-evaluation model whose training cache was never filled.

    Such a model would score every item 0 and ``top_k`` would return the lowest item
    ids: numbers that look like metrics and mean nothing.

    Raises:
      ValueError: when ``model.ranks_with_training_cache()`` and every cached array is all zeros.
    """
    if not model.ranks_with_training_cache():
        return
    leaves = jax.tree.leaves(nnx.state(model, TrainingCache))
    if leaves and not any(bool(jnp.any(leaf != 0)) for leaf in leaves):
        raise ValueError(
            f"{type(model).__name__} ranks with the representation cached by its last training forward "
            "(stale_eval=True), but that cache was never filled: train it, load it from a checkpoint "
            "written by the trainer, or build it with stale_eval=False to recompute the representation"
        )
