"""Mirror Gradient and the optimizer pieces around it, all plain optax transformations.

* :mod:`.mirror`: :func:`mirror_gradient`, the transformation itself, its state and the
  implicit gradient-norm penalty it amounts to (:func:`implicit_penalty`);
* :mod:`.schedule`: which batch mirrors (:func:`is_mirror_batch`, the one place that
  decides) and how an epoch is grouped for a jitted scan (:func:`plan_epoch`);
* :mod:`.steps`: jittable normal / mirror train steps and the block step of a scan,
  without ``lax.cond``;
* :mod:`.sharpness`: the other flat-minima methods as transformations of the same kind:
  SAM (through ``optax.contrib.sam``), ASAM and the gradient-norm penalty;
* :mod:`.clipping`: clipping with PyTorch's formula, as the reference clips;
* :mod:`.partition`: an optimizer over two parameter groups, one of which a step may
  skip (torch's ``None`` gradients);
* :mod:`.nnx_step`: the Flax NNX integration (a pure ``grad_fn`` and an ``nnx.jit`` step).
"""

from mirrorgrad_jax.optim.clipping import torch_clip_by_global_norm, torch_clip_grad_norm
from mirrorgrad_jax.optim.mirror import (
    MirrorGradientState,
    find_mirror_state,
    implicit_penalty,
    mirror_gradient,
    mirror_pass_pending,
)
from mirrorgrad_jax.optim.nnx_step import make_nnx_train_step, nnx_grad_fn
from mirrorgrad_jax.optim.partition import skippable_partition
from mirrorgrad_jax.optim.schedule import EpochSegment, Schedule, epoch_layout, is_mirror_batch, plan_epoch
from mirrorgrad_jax.optim.sharpness import adaptive_ascent, asam, gradient_norm_penalty, sam
from mirrorgrad_jax.optim.steps import TrainSteps, make_block_step, make_train_steps

__all__ = [
    "EpochSegment",
    "MirrorGradientState",
    "Schedule",
    "TrainSteps",
    "adaptive_ascent",
    "asam",
    "epoch_layout",
    "find_mirror_state",
    "gradient_norm_penalty",
    "implicit_penalty",
    "is_mirror_batch",
    "make_block_step",
    "make_nnx_train_step",
    "make_train_steps",
    "mirror_gradient",
    "mirror_pass_pending",
    "nnx_grad_fn",
    "plan_epoch",
    "sam",
    "skippable_partition",
    "torch_clip_by_global_norm",
    "torch_clip_grad_norm",
]
