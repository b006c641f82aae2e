"""Flax NNX integration: pure gradient functions and a ready ``nnx.jit`` train step.

``flax.nnx.Optimizer.update(model, grads, **kwargs)`` forwards extra keyword arguments
to the optax transformation, so :func:`~mirrorgrad_jax.mirror_gradient` in opaque mode
works with it once it is given a *pure* ``grad_fn`` over the parameter State. The
helpers here build that function (split the model once, merge a copy per call) and a
train step that uses it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import nnx

__all__ = ["nnx_grad_fn", "make_nnx_train_step"]


def nnx_grad_fn(
    model: nnx.Module,
    loss_fn: Callable[..., jax.Array],
    *args: Any,
    wrt: Any = nnx.Param,
    **kwargs: Any,
) -> Callable[[Any], Any]:
    """Returns ``grad_fn(params) -> grads``, pure over the ``wrt`` State of ``model``.

    The model is split once, now: everything that is not ``wrt`` (batch statistics,
    RNG counters, constants) is captured as it is at this moment, so stochastic
    layers draw new randomness relative to the first pass. ``loss_fn(model, *args,
    **kwargs)`` runs on a merged COPY, so whatever it mutates is discarded (as opaque
    mode documents); use transparent mode to keep such side effects.

    Args:
      model: the live NNX module.
      loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar``.
      *args: positional arguments for ``loss_fn`` after the model (the batch).
      wrt: the filter of differentiated variables; must match ``nnx.Optimizer(wrt=...)``.
      **kwargs: keyword arguments for ``loss_fn``.

    Returns:
      A function from a parameter State (pure arrays or Variables, as
      ``nnx.Optimizer`` passes them) to its gradient State of the same structure.
    """
    graphdef, _, rest = nnx.split(model, wrt, ...)

    def loss_of(params):
        return loss_fn(nnx.merge(graphdef, params, rest, copy=True), *args, **kwargs)

    return jax.grad(loss_of)


def _advance_rng_counts(model: nnx.Module, before: Any, after: Any, times: Any) -> None:
    """Moves every RNG stream of ``model`` on by ``times`` more forward passes.

    ``before``/``after`` are the stream counts around one forward pass; the mirror pass
    runs on a discarded copy, so without this the next batch's first pass would reuse
    the counts (and draw the same dropout masks) that the mirror pass used.
    """
    advanced = jax.tree.map(lambda b, a: a + (a - b) * times, before, after)
    nnx.update(model, advanced)


def make_nnx_train_step(
    loss_fn: Callable[..., jax.Array],
) -> Callable[..., jax.Array]:
    """Builds ``train_step(model, optimizer, *batch, mirror=None) -> loss`` under ``nnx.jit``.

    The step computes the loss and gradients, then calls
    ``optimizer.update(model, grads, grad_fn=..., mirror=...)``. With a
    :func:`~mirrorgrad_jax.mirror_gradient` (opaque mode) optimizer this is one whole
    mirror iteration on mirror batches. ``mirror`` is static: pass the host's
    :func:`~mirrorgrad_jax.is_mirror_batch` decision to compile one program per branch
    (no ``lax.cond``), or leave it ``None`` to follow the optimizer's own counter.
    Optimizers that take no extra arguments are called without them.

    Randomness: the mirror pass draws from the RNG streams as they are after the first
    pass (fresh dropout masks, as in the reference), and the model's streams are then
    moved on by one more forward pass, so the next batch draws new masks too. With
    ``mirror=None`` the step cannot tell whether the optimizer mirrored, so the streams
    move on by two passes on every batch (skipped counts cost nothing and keep every
    draw fresh).

    Args:
      loss_fn: ``loss_fn(model, *batch) -> scalar loss``.

    Returns:
      The jitted train step; it returns the first-pass loss, as the reference logs.
    """

    @nnx.jit(static_argnames=("mirror",))
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, *batch: Any, mirror: bool | None = None):
        # Snapshots (tree.map copies the containers): nnx.state returns live Variables.
        counts_before = jax.tree.map(lambda c: c, nnx.state(model, nnx.RngCount))
        loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
        if isinstance(optimizer.tx, optax.GradientTransformationExtraArgs):
            counts_after = jax.tree.map(lambda c: c, nnx.state(model, nnx.RngCount))
            extra = {"grad_fn": nnx_grad_fn(model, loss_fn, *batch, wrt=optimizer.wrt)}
            if mirror is not None:
                extra["mirror"] = mirror
            optimizer.update(model, grads, **extra)
            if mirror is not False and jax.tree.leaves(counts_after):
                _advance_rng_counts(model, counts_before, counts_after, 1)
        else:
            optimizer.update(model, grads)
        return loss

    return train_step
