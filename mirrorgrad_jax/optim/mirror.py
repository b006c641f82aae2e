"""Mirror Gradient (Zhong et al., WWW 2024) as an optax gradient transformation.

Every ``beta``-th mini-batch is a *mirror* batch: the inner optimizer first takes a
step with the gradient scaled by ``alpha1``, then the gradient of the SAME batch is
evaluated again at the new parameters and a second step is taken with it scaled by
``-alpha2``. With plain SGD this is Algorithm 1 of the paper; with any other inner
optimizer it is what the reference PyTorch trainer does (two ``optimizer.step()``
calls whose gradients were scaled before the optimizer).

Two ways to drive it:

* **opaque** (default): ``update(grads, state, params, grad_fn=...)`` performs a whole
  mirror iteration inside one call; ``grad_fn(params) -> grads`` is evaluated at the
  intermediate parameters. One call per batch, like ``optax.contrib.sam``.
* **transparent**: every call is ONE inner step. On a mirror batch the first call
  applies the ``alpha1`` step; the loop must then call ``update`` again with the
  gradient of the same batch at the new parameters (:func:`mirror_pass_pending` says
  so). No ``lax.cond`` is ever needed: the branch is a scalar on the gradient.

Choosing the branch without ``lax.cond``: pass ``mirror=True/False`` as a Python bool
(a static extra argument) and the traced program contains only that branch; compile
the train step twice (``static_argnames``) and pick on the host with
:func:`is_mirror_batch`. A ``lax.cond`` around embedding tables was measured to be
several times slower on CPU because XLA copies the tables around the conditional.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mirrorgrad_jax.optim.clipping import torch_clip_grad_norm
from mirrorgrad_jax.optim.schedule import Schedule, is_mirror_batch

__all__ = [
    "MirrorGradientState",
    "mirror_gradient",
    "implicit_penalty",
    "mirror_pass_pending",
    "find_mirror_state",
]

ApplyTo = Literal["gradient", "update"]
Mode = Literal["opaque", "transparent"]

_OWN_EXTRA_ARGS = ("grad_fn", "mirror")


class MirrorGradientState(NamedTuple):
    """State of :func:`mirror_gradient`.

    Attributes:
      count: number of mini-batches completed so far (int32). A mirror batch counts
        once, although it takes two inner steps.
      phase: 0 when the next call starts a new batch; 1 (transparent mode only) when
        the next call must carry the mirror gradient of the batch just started.
      inner_state: the state of the wrapped optimizer.
    """

    count: jax.Array
    phase: jax.Array
    inner_state: optax.OptState


def implicit_penalty(alpha1: float, alpha2: float, learning_rate: float) -> float:
    """Coefficient of the gradient-norm penalty implied by one mirror iteration.

    Derivation (plain SGD, learning rate ``eta``, ``g = grad L(theta)``, ``H`` its
    Hessian). The mirror iteration is::

        theta' = theta - a1*eta*g
        theta+ = theta' + a2*eta*grad L(theta')

    Expanding ``grad L(theta') = g - a1*eta*H g + O(eta^2)`` gives::

        theta+ = theta - (a1 - a2)*eta*g - a1*a2*eta^2 * H g + O(eta^3).

    A gradient step of size ``(a1 - a2)*eta`` on ``L + lam*||grad L||^2`` (whose
    gradient is ``g + 2*lam*H g``) moves by ``-(a1 - a2)*eta*g - 2*lam*(a1 - a2)*eta*H g``.
    Matching the ``H g`` terms::

        lam = a1 * a2 * eta / (2 * (a1 - a2)).

    So to second order MG is gradient descent with step ``(a1 - a2)*eta`` on the loss
    plus ``lam`` times the squared gradient norm: a flatness penalty. The two agree up
    to ``O(eta^3)`` per iteration. ``a1 > a2 > 0`` keeps both the step and ``lam``
    positive.

    Args:
      alpha1: descent coefficient of the first sub-step.
      alpha2: ascent coefficient of the mirror sub-step.
      learning_rate: the (plain SGD) learning rate ``eta``.

    Returns:
      ``lam``, the coefficient of ``||grad L||^2``.

    Raises:
      ValueError: if ``alpha1 <= alpha2`` (no positive penalty exists).
    """
    if alpha1 <= alpha2:
        raise ValueError(
            f"implicit_penalty needs alpha1 > alpha2, got alpha1={alpha1}, alpha2={alpha2}: "
            "for alpha2 >= alpha1 the mirror iteration has no descent component."
        )
    return alpha1 * alpha2 * learning_rate / (2.0 * (alpha1 - alpha2))


def _scale(factor: Any, tree: Any) -> Any:
    """Multiplies every leaf by ``factor`` while keeping each leaf's dtype."""
    return jax.tree.map(lambda x: (jnp.asarray(factor, x.dtype) * x), tree)


def _is_concrete_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate(alpha1: Any, alpha2: Any, beta: Any, allow_ascent: bool) -> None:
    if not isinstance(beta, int) or isinstance(beta, bool):
        raise TypeError(
            f"beta must be a Python int (it fixes the program's structure), got {type(beta).__name__}; "
            "with optax.inject_hyperparams pass static_args=('beta',)."
        )
    if beta < 1:
        raise ValueError(f"beta must be >= 1 (a mirror batch every beta batches), got {beta}")
    for name, value in (("alpha1", alpha1), ("alpha2", alpha2)):
        if _is_concrete_number(value) and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if _is_concrete_number(alpha1) and _is_concrete_number(alpha2) and alpha2 >= alpha1:
        message = (
            f"alpha2={alpha2} >= alpha1={alpha1} violates the paper's condition alpha1 > alpha2 > 0: "
            "the mirror iteration then has no net descent (with SGD it ascends and diverges)."
        )
        if not allow_ascent:
            raise ValueError(message + " Pass allow_ascent=True to run it anyway.")
        warnings.warn(message, stacklevel=3)


def mirror_gradient(
    inner: optax.GradientTransformation,
    alpha1: float | jax.Array = 1.0,
    alpha2: float | jax.Array = 0.2,
    beta: int = 3,
    *,
    mode: Mode = "opaque",
    apply_to: ApplyTo = "gradient",
    schedule: Schedule | None = None,
    steps_per_epoch: int | None = None,
    clip_grad_norm: float | None = None,
    batch_axis_name: str | None = None,
    allow_ascent: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with Mirror Gradient.

    Must be the outermost transformation: anything chained before it sees only the
    first gradient of a mirror batch, and anything after it would alter an update
    whose second half assumed it is applied as is. Put weight decay and learning-rate
    scaling INSIDE ``inner`` (``optax.chain(optax.add_decayed_weights(wd),
    optax.adam(lr))`` reproduces torch's coupled weight decay, which the reference does
    not negate in the mirror pass). Learning-rate schedules inside ``inner`` advance
    per inner step, i.e. ``1 + 1/beta`` times per batch.

    Gradient clipping has two placements:

    * ``clip_grad_norm=c`` (the reference trainer's): the reference clips ONCE per
      batch, after its if/else, so only the gradient of the LAST inner step of a batch
      is clipped: the normal step, or on a mirror batch the mirror step's
      ``-alpha2 * g'``; the ``alpha1`` step is never clipped. The clip acts on the
      gradient after MG's scaling (torch clips the gradient of ``-alpha2 * L``), with
      torch's formula (:func:`torch_clip_grad_norm`).
    * ``optax.clip_by_global_norm`` inside ``inner``: every inner step is clipped,
      both sub-steps of a mirror batch included. Not what the reference does.

    Do not nest it inside ``optax.MultiSteps`` (it would mirror each micro-batch with
    a gradient function that sees only that micro-batch) nor wrap a ``MultiSteps``
    (the first sub-step would usually be a no-op accumulation).

    Args:
      inner: the optimizer to wrap, e.g. ``optax.adam(1e-3)``.
      alpha1: scale of the first (descent) sub-step; 1.0 in the paper.
      alpha2: scale of the mirror (ascent) sub-step; the paper grid-searches
        {0.1, 0.2, 0.3}. May be an array (``optax.inject_hyperparams``).
      beta: one mirror batch every ``beta`` batches (3 in the paper).
      mode: ``"opaque"`` (one ``update`` call per batch, needs ``grad_fn`` and
        ``params``) or ``"transparent"`` (one call per inner step; the loop feeds
        the same batch twice on mirror batches).
      apply_to: where the coefficients act. ``"gradient"`` (reference): the inner
        optimizer receives ``alpha1 * g`` and then ``-alpha2 * g'``. ``"update"``:
        the inner optimizer receives ``g`` and ``g'`` unscaled and its own steps are
        scaled, ``alpha1 * u(g)`` then ``-alpha2 * u(g')``, so the second sub-step is
        a true step against the optimizer's direction even under Adam. With plain SGD
        both are Algorithm 1.
      schedule: ``"reference"`` mirrors the first batch of every epoch and then every
        ``beta``-th, restarting the index each epoch, as the reference trainer whose
        numbers the paper reports; it needs ``steps_per_epoch``. ``"global"`` mirrors
        batches 0, beta, 2*beta, ... of the whole run without restarting.
        ``"algorithm1"`` uses the paper's global 1-based counter. The default (``None``)
        is ``"reference"`` when ``steps_per_epoch`` is given and ``"global"``
        otherwise: without the epoch length no transformation can know where an
        epoch starts. See :func:`is_mirror_batch`. A static ``mirror=`` extra
        argument overrides the schedule batch by batch.
      steps_per_epoch: batches per epoch, so ``"reference"`` can restart its index.
      clip_grad_norm: clip the gradient of the last inner step of each batch to this
        global norm, as the reference trainer (see above); ``None`` (default, as the
        reference's config) does not clip.
      batch_axis_name: under ``shard_map``/``pmap``, the axis over which the mirror
        gradient computed by ``grad_fn`` is averaged (opaque mode; in transparent
        mode average the gradients you pass in, as for any optimizer).
      allow_ascent: permit ``alpha2 >= alpha1`` (warns instead of raising).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``update`` accepts the extra
      keyword arguments ``grad_fn`` (opaque mode) and ``mirror`` (a Python bool that
      overrides the schedule for this batch and removes the dynamic branch); every
      other extra argument is forwarded to ``inner``.

    Example::

      >>> import jax, jax.numpy as jnp, optax
      >>> from mirrorgrad_jax import mirror_gradient
      >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
      >>> tx = mirror_gradient(optax.sgd(0.1), alpha1=1.0, alpha2=0.2, beta=3)
      >>> params = jnp.zeros(3); state = tx.init(params)
      >>> for _ in range(50):
      ...   g = jax.grad(loss)(params)
      ...   u, state = tx.update(g, state, params, grad_fn=jax.grad(loss))
      ...   params = optax.apply_updates(params, u)
      >>> bool(jnp.allclose(params, 1.0, atol=1e-3))
      True
    """
    if isinstance(inner, optax.MultiSteps):
        raise TypeError(
            "mirror_gradient cannot wrap optax.MultiSteps: its first sub-step would usually only "
            "accumulate. Accumulate gradients yourself and pass the full-batch gradient instead."
        )
    if mode not in ("opaque", "transparent"):
        raise ValueError(f"mode must be 'opaque' or 'transparent', got {mode!r}")
    if apply_to not in ("gradient", "update"):
        raise ValueError(f"apply_to must be 'gradient' or 'update', got {apply_to!r}")
    if schedule is None:
        schedule = "reference" if steps_per_epoch is not None else "global"
    if schedule not in ("reference", "global", "algorithm1"):
        raise ValueError(f"schedule must be 'reference', 'global' or 'algorithm1', got {schedule!r}")
    if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or isinstance(steps_per_epoch, bool) or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}")
    if schedule == "reference" and steps_per_epoch is None:
        raise ValueError(
            "schedule='reference' restarts the batch index every epoch (the first batch of each epoch mirrors) "
            "and needs steps_per_epoch; pass it, or use schedule='global' for batches 0, beta, 2*beta, ... "
            "of the whole run"
        )
    if clip_grad_norm is not None and (not _is_concrete_number(clip_grad_norm) or not clip_grad_norm > 0):
        raise ValueError(f"clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}")
    _validate(alpha1, alpha2, beta, allow_ascent)
    inner = optax.with_extra_args_support(inner)

    def scaled_inner_step(grads, inner_state, params, in_scale, out_scale, extra, clip=False):
        """One inner step with the gradient scaled by ``in_scale`` (then clipped when ``clip``) and the update by ``out_scale``."""
        grads = _scale(in_scale, grads)
        if clip is not False and clip_grad_norm is not None:
            clipped = torch_clip_grad_norm(grads, clip_grad_norm)
            grads = clipped if clip is True else jax.tree.map(lambda c, g: jnp.where(clip, c, g), clipped, grads)
        updates, inner_state = inner.update(grads, inner_state, params, **extra)
        return _scale(out_scale, updates), inner_state

    def coefficients(sign_alpha):
        # (gradient scale, update scale) of a sub-step whose signed coefficient is sign_alpha.
        return (sign_alpha, 1.0) if apply_to == "gradient" else (1.0, sign_alpha)

    def init_fn(params):
        return MirrorGradientState(
            count=jnp.zeros([], jnp.int32),
            phase=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def mirror_decision(state, mirror):
        if mirror is None:
            return is_mirror_batch(state.count, beta, schedule=schedule, steps_per_epoch=steps_per_epoch)
        if not isinstance(mirror, bool):
            raise TypeError(
                "the extra argument `mirror` must be a Python bool (mark it static under jit) or None, "
                f"got {type(mirror).__name__}; leave it out to follow the schedule with a dynamic branch."
            )
        return mirror

    def opaque_update(grads, state, params, grad_fn, mirror, extra):
        if grad_fn is None:
            raise ValueError(
                "mirror_gradient(mode='opaque') needs the extra argument grad_fn: "
                "update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch)). "
                "Use mode='transparent' to feed the mirror gradient yourself."
            )
        if params is None:
            raise ValueError("mirror_gradient(mode='opaque') needs params: update(grads, state, params, grad_fn=...).")

        def normal(inner_state):
            return scaled_inner_step(grads, inner_state, params, 1.0, 1.0, extra, clip=True)

        def mirrored(inner_state):
            u1, inner_state = scaled_inner_step(grads, inner_state, params, *coefficients(alpha1), extra)
            moved = optax.apply_updates(params, u1)
            mirror_grads = grad_fn(moved)
            if batch_axis_name is not None:
                mirror_grads = jax.lax.pmean(mirror_grads, axis_name=batch_axis_name)
            u2, inner_state = scaled_inner_step(mirror_grads, inner_state, moved, *coefficients(-alpha2), extra, clip=True)
            # Summed in the parameters' dtype so that apply_updates(params, u1 + u2) == moved + u2 up to rounding.
            return jax.tree.map(lambda a, b: (a + b).astype(a.dtype), u1, u2), inner_state

        decision = mirror_decision(state, mirror)
        if isinstance(decision, bool):
            updates, inner_state = (mirrored if decision else normal)(state.inner_state)
        else:
            updates, inner_state = jax.lax.cond(decision, mirrored, normal, state.inner_state)
        return updates, MirrorGradientState(state.count + 1, state.phase, inner_state)

    def transparent_update(grads, state, params, mirror, extra):
        second_pass = state.phase == 1
        starts_mirror = jnp.logical_and(jnp.logical_not(second_pass), mirror_decision(state, mirror))
        # The widest enabled float dtype: f64 coefficients stay exact when x64 is on.
        dtype = jnp.result_type(float)
        one = jnp.ones([], dtype)
        signed = jnp.where(
            second_pass, -jnp.asarray(alpha2, dtype), jnp.where(starts_mirror, jnp.asarray(alpha1, dtype), one)
        )
        in_scale, out_scale = (signed, one) if apply_to == "gradient" else (one, signed)
        # The last inner step of a batch is clipped (reference placement): every step but a mirror batch's first.
        updates, inner_state = scaled_inner_step(
            grads, state.inner_state, params, in_scale, out_scale, extra, clip=jnp.logical_not(starts_mirror)
        )
        phase = starts_mirror.astype(jnp.int32)
        count = state.count + (1 - phase)
        return updates, MirrorGradientState(count, phase, inner_state)

    def update_fn(updates, state, params=None, **extra_args):
        grad_fn = extra_args.pop("grad_fn", None)
        mirror = extra_args.pop("mirror", None)
        if mode == "opaque":
            return opaque_update(updates, state, params, grad_fn, mirror, extra_args)
        return transparent_update(updates, state, params, mirror, extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_mirror_state(state: Any) -> MirrorGradientState:
    """Finds the :class:`MirrorGradientState` inside a (possibly wrapped) optimizer state.

    Handles the state of ``mirror_gradient`` itself, of ``optax.inject_hyperparams``
    around it, and ``flax.nnx.Optimizer.opt_state``.

    Raises:
      ValueError: if there is none, or more than one.
    """
    found = []

    def visit(node):
        if isinstance(node, MirrorGradientState):
            found.append(node)
            return
        if isinstance(node, (tuple, list)):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)
        elif hasattr(node, "__dict__") and not isinstance(node, jax.Array):
            for child in vars(node).values():
                visit(child)

    visit(state)
    if len(found) != 1:
        raise ValueError(f"expected exactly one MirrorGradientState in the optimizer state, found {len(found)}")
    return found[0]


def mirror_pass_pending(state: Any) -> jax.Array:
    """Transparent mode: True when the next ``update`` must receive the mirror gradient.

    That is, the batch just stepped on was a mirror batch: compute the gradient of the
    same batch at the current parameters and call ``update`` with it.
    """
    return find_mirror_state(state).phase == 1


GradFn = Callable[[optax.Params], optax.Updates]
