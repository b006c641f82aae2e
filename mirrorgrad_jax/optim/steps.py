"""Jittable train steps that run Mirror Gradient without ``lax.cond``.

The recommended way to drive :func:`~mirrorgrad_jax.mirror_gradient` in a hot loop:
build it with ``mode="transparent"`` and use two step functions, one per branch, chosen
on the host (or laid out statically in a scan over blocks of ``beta`` batches). The
mirror step applies its two inner updates in place, one after the other, exactly as
the reference trainer's two ``optimizer.step()`` calls, so XLA never has to keep two
copies of large embedding tables alive around a conditional.

``loss_fn(params, batch, key, *context) -> loss`` or ``-> (loss, aux)`` with
``has_aux=True``; ``context`` holds non-differentiated inputs that are not split per
batch (model constants, graphs), passed as arguments so they are not baked into the
compiled program.
The mirror pass gets a fresh key (``jax.random.fold_in(key, 1)``) so dropout-like
layers draw new randomness, as in the reference. Under jax's partitionable threefry (the
default) that key equals ``jax.random.split(key, n)[1]``: a model that splits its key
draws the second pass's randomness from children of a key the first pass used. No model
here draws the same mask or noise twice that way (LGMRec, MVGAE, SelfCF and PGL checked);
another tag would move every recorded run of a stochastic model, so the key stays.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainSteps", "make_block_step", "make_train_steps"]

StepFn = Callable[..., tuple[Any, Any, jax.Array, Any]]


class TrainSteps(NamedTuple):
    """Pure step functions ``(params, opt_state, batch, key, *context) -> (params, opt_state, loss, aux)``.

    ``loss`` is the first-pass loss (the one the reference logs), or
    ``[first, last]`` with ``both_losses``; ``aux`` is the auxiliary output of the LAST
    forward pass of the step (the second pass on mirror batches), matching models that
    cache their training forward.
    """

    normal: StepFn
    mirror: StepFn


def make_train_steps(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    mirror: bool = True,
    both_losses: bool = False,
    thread_aux: bool = False,
    update_kwargs: Mapping[str, Any] | None = None,
    mirror_pass_loss_fn: Callable[..., Any] | None = None,
    mirror_pass_update_kwargs: Mapping[str, Any] | None = None,
    perturbed_pass: bool = False,
) -> TrainSteps:
    """Builds the normal and mirror train steps for ``tx``.

    Args:
      loss_fn: ``loss_fn(params, batch, key, *context)`` returning the loss, or ``(loss, aux)``
        when ``has_aux``.
      tx: a :func:`~mirrorgrad_jax.mirror_gradient` transformation in
        ``mode="transparent"`` (or any optax transformation when ``mirror=False``).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      mirror: False for a plain optimizer: ``mirror`` then equals ``normal`` and
        ``tx`` receives no MG extra arguments.
      both_losses: return ``loss`` as ``[first-pass loss, last-pass loss]`` (shape
        ``(2,)``; on normal steps both are the one loss), so a caller can check the
        mirror pass for non-finite values too.
      thread_aux: the last ``context`` element is a state the loss updates and returns
        as ``aux`` (e.g. a model's training cache): the mirror pass sees the state the
        first pass produced.
      update_kwargs: static extra arguments for ``tx.update`` on the first (or only)
        inner step of a batch.
      mirror_pass_loss_fn: the loss of the mirror pass (default ``loss_fn``).
      mirror_pass_update_kwargs: extra arguments for the mirror pass's ``tx.update``
        (default ``update_kwargs``).
      perturbed_pass: ``tx`` is a two-pass method in opaque mode (SAM, ASAM, the
        gradient-norm penalty of :mod:`~mirrorgrad_jax.optim.sharpness`): every step hands
        it ``grad_fn``, the gradient of the same batch at the parameters it asks for,
        computed with a fresh key (``fold_in(key, 1)``, as the mirror pass) and, with
        ``thread_aux``, from the state the first pass produced. ``loss`` then reports that
        second pass last, and ``aux`` is its output. Needs ``mirror=False``.

    Returns:
      A :class:`TrainSteps` of pure functions; jit them (donating params and state).
    """
    first_kwargs = dict(update_kwargs or {})
    second_kwargs = dict(first_kwargs if mirror_pass_update_kwargs is None else mirror_pass_update_kwargs)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)
    second_value_and_grad = value_and_grad if mirror_pass_loss_fn is None else jax.value_and_grad(mirror_pass_loss_fn, has_aux=has_aux)

    def evaluate(vg, params, batch, key, context):
        out, grads = vg(params, batch, key, *context)
        loss, aux = out if has_aux else (out, None)
        return loss, aux, grads

    def report(first, last):
        return jnp.stack([first, last]) if both_losses else first

    def normal(params, opt_state, batch, key, *context):
        loss, aux, grads = evaluate(value_and_grad, params, batch, key, context)
        extra = {"mirror": False, **first_kwargs} if mirror else first_kwargs
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state, report(loss, loss), aux

    def perturbed(params, opt_state, batch, key, *context):
        loss, aux, grads = evaluate(value_and_grad, params, batch, key, context)
        second_context = (*context[:-1], aux) if thread_aux else context
        seen = {}

        def grad_fn(moved):
            # Called once, while this step is traced: what it records stays inside the step.
            seen["loss"], seen["aux"], moved_grads = evaluate(second_value_and_grad, moved, batch, jax.random.fold_in(key, 1), second_context)
            return moved_grads

        updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn, **first_kwargs)
        if not seen:
            raise ValueError("perturbed_pass=True, but the transformation never called grad_fn")
        return optax.apply_updates(params, updates), opt_state, report(loss, seen["loss"]), seen["aux"]

    def mirrored(params, opt_state, batch, key, *context):
        loss, aux, grads = evaluate(value_and_grad, params, batch, key, context)
        updates, opt_state = tx.update(grads, opt_state, params, mirror=True, **first_kwargs)
        params = optax.apply_updates(params, updates)
        if thread_aux:
            context = (*context[:-1], aux)
        loss2, aux, grads = evaluate(second_value_and_grad, params, batch, jax.random.fold_in(key, 1), context)
        updates, opt_state = tx.update(grads, opt_state, params, **second_kwargs)
        return optax.apply_updates(params, updates), opt_state, report(loss, loss2), aux

    if perturbed_pass:
        if mirror:
            raise ValueError("perturbed_pass needs mirror=False: a two-pass method and MG do not combine")
        return TrainSteps(perturbed, perturbed)
    return TrainSteps(normal, mirrored if mirror else normal)


def make_block_step(steps: TrainSteps, beta: int, *, thread_aux: bool = False) -> StepFn:
    """A step over a block of ``beta`` batches: the first mirrored, the rest normal.

    ``batches`` has a leading axis of size ``beta`` and ``keys`` holds ``beta`` PRNG keys.
    Meant as the body of a ``lax.scan`` over an epoch laid out by :func:`~mirrorgrad_jax.optim.plan_epoch`;
    returns the per-batch losses (leading axis ``beta``) and the aux of the last batch.
    With ``thread_aux`` (see :func:`make_train_steps`) each batch sees, as its last
    context element, the aux the previous batch produced.
    """

    def block(params, opt_state, batches, keys, *context):
        first = jax.tree.map(lambda b: b[0], batches)
        params, opt_state, loss, aux = steps.mirror(params, opt_state, first, keys[0], *context)
        if beta == 1:
            return params, opt_state, loss[None], aux
        head = context[:-1] if thread_aux else context

        # The normal batches run as an inner scan rather than unrolled: unrolled steps in
        # one scan body made XLA copy the carried tables (measured ~20% slower on CPU).
        def normal(carry, xs):
            p, s, a = carry
            ctx = (*head, a) if thread_aux else head
            p, s, loss, a = steps.normal(p, s, *xs, *ctx)
            return (p, s, a), loss

        rest = jax.tree.map(lambda b: b[1:], batches)
        (params, opt_state, aux), losses = jax.lax.scan(normal, (params, opt_state, aux), (rest, keys[1:]))
        return params, opt_state, jnp.concatenate([loss[None], losses]), aux

    return block
