"""The other flat-minima methods beside Mirror Gradient: SAM, ASAM and the gradient-norm penalty.

Each wraps an inner optimizer like :func:`~mirrorgrad_jax.mirror_gradient` does and runs in
*opaque* mode: one ``update`` call per batch, which evaluates the gradient of the same
batch once more at a perturbed point through the extra argument ``grad_fn(params) ->
grads``. So every batch costs two gradient evaluations (MG: ``1 + 1/beta`` on average), and
no ``lax.cond`` is ever needed: every batch takes the same path.

* :func:`sam` (Foret et al., ICLR 2021) is the ecosystem's own ``optax.contrib.sam`` with
  ``sync_period=2`` and ``opaque_mode=True``: its one adversarial step is the ascent
  ``w + rho * g / ||g||`` (``adv_optimizer`` = normalise, then SGD with learning rate
  ``rho``, which optax negates into an ascent), its outer step gives the inner optimizer
  the gradient at that point. In the trainer's terms: the first pass computes ``g`` at
  ``w``, the second pass (``grad_fn``) the gradient the optimizer steps with.
* :func:`asam` (Kwon et al., ICML 2021) is the same with the element-wise adaptive ascent
  ``w + rho * T^2 g / ||T g||``, ``T = |w| + eta``: a perturbation that scales with each
  weight, so the sharpness it measures does not change when a layer is rescaled.
* :func:`gradient_norm_penalty` (Zhao et al., ICML 2022) steps with
  ``(1 - alpha) g(w) + alpha g(w + r g / ||g||)``, the finite-difference gradient of
  ``L + alpha r ||g||``; ``alpha = 1`` is SAM with ``rho = r``.

Extra arguments other than ``grad_fn`` (e.g. the trainer's ``skip`` for a model's
first-batch parameters) are passed on to the inner optimizer, which ``optax.contrib.sam``
alone would drop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["adaptive_ascent", "asam", "gradient_norm_penalty", "sam"]

GradFn = Callable[[optax.Params], optax.Updates]


def _require_grad_fn(name: str, grad_fn: GradFn | None, params: Any) -> None:
    if grad_fn is None:
        raise ValueError(
            f"{name} needs the extra argument grad_fn: update(grads, state, params, "
            "grad_fn=lambda p: jax.grad(loss)(p, batch)), the gradient of the same batch at other parameters"
        )
    if params is None:
        raise ValueError(f"{name} needs params: update(grads, state, params, grad_fn=...)")


def _over_norm(tree: Any, norm: jax.Array) -> Any:
    """``tree / norm`` leaf by leaf, and zeros where ``norm`` is 0 (a zero gradient: no ascent, not 0/0 = NaN).

    Where ``norm > 0`` the result is the plain quotient, bit for bit.
    """
    return jax.tree.map(lambda x: jnp.where(norm > 0, x / norm, jnp.zeros_like(x)), tree)


def _safe_normalize() -> optax.GradientTransformation:
    """``optax.contrib.normalize`` (``g / ||g||``, the global norm), with a zero gradient left at zero.

    Its state is ``optax.contrib.normalize``'s, so SAM's state, and checkpoints of it, keep
    their structure; for a nonzero gradient the output is the same bits.
    """

    def update(updates, state, params=None):
        del params
        return _over_norm(updates, optax.tree.norm(updates)), state

    return optax.GradientTransformation(optax.contrib.normalize().init, update)


def adaptive_ascent(rho: float, eta: float = 0.01) -> optax.GradientTransformation:
    """ASAM's adversarial step as an optax "optimizer" for ``optax.contrib.sam``'s ``adv_optimizer`` slot.

    Returns ``-rho * T^2 g / ||T g||`` with ``T = |params| + eta`` element-wise; ``sam``
    negates an adversarial update, so the perturbation is ``+rho * T^2 g / ||T g||``.
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("adaptive_ascent needs params (the perturbation scales with each weight)")
        scale = jax.tree.map(lambda p: jnp.abs(p) + jnp.asarray(eta, p.dtype), params)
        scaled = jax.tree.map(lambda t, g: t * g, scale, updates)
        norm = optax.tree.norm(scaled)
        # -rho t s / ||s|| in this order (the same bits as ever); a zero gradient: no ascent, not 0/0.
        return jax.tree.map(lambda t, s: jnp.where(norm > 0, -rho * t * s / norm, jnp.zeros_like(s)), scale, scaled), state

    return optax.GradientTransformation(lambda _params: optax.EmptyState(), update)


def _two_pass_sam(name: str, inner: optax.GradientTransformation, adversary: optax.GradientTransformation, batch_axis_name: str | None):
    inner = optax.with_extra_args_support(inner)

    def build(extra: dict[str, Any]) -> optax.GradientTransformationExtraArgs:
        # optax.contrib.sam calls its optimizer without extra arguments: bind this call's.
        bound = optax.GradientTransformation(inner.init, lambda u, s, p=None: inner.update(u, s, p, **extra))
        return optax.contrib.sam(bound, adversary, sync_period=2, reset_state=True, opaque_mode=True, batch_axis_name=batch_axis_name)

    def init_fn(params):
        return build({}).init(params)

    def update_fn(updates, state, params=None, *, grad_fn: GradFn | None = None, **extra):
        _require_grad_fn(name, grad_fn, params)
        return build(extra).update(updates, state, params, grad_fn=lambda p, _step: grad_fn(p))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sam(inner: optax.GradientTransformation, rho: float = 0.05, *, batch_axis_name: str | None = None) -> optax.GradientTransformationExtraArgs:
    """Sharpness-aware minimisation around ``inner``, as ``optax.contrib.sam`` computes it.

    Each batch: ``e = rho * g / ||g||`` (the global norm over every parameter), then the
    inner optimizer steps from ``w`` with the gradient at ``w + e``.

    Args:
      inner: the optimizer, e.g. ``optax.adam(1e-3)``.
      rho: the radius of the ascent step (> 0).
      batch_axis_name: under ``shard_map``/``pmap``, the axis over which the second
        gradient is averaged.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params`` and
      ``grad_fn(params) -> grads`` (the gradient of the same batch); other extra arguments
      go to ``inner``.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    return _two_pass_sam("sam", inner, optax.chain(_safe_normalize(), optax.sgd(rho)), batch_axis_name)


def asam(
    inner: optax.GradientTransformation, rho: float = 0.5, eta: float = 0.01, *, batch_axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """Adaptive SAM around ``inner``: SAM whose ascent is ``rho * T^2 g / ||T g||``, ``T = |w| + eta``.

    Kwon et al. use larger radii than SAM (0.5 for their CIFAR runs, with ``eta = 0.01``),
    since the perturbation is measured relative to each weight.

    Args:
      inner: the optimizer.
      rho: the radius of the ascent (> 0).
      eta: the floor added to ``|w|`` (>= 0), so a zero weight is still perturbed.
      batch_axis_name: as in :func:`sam`.

    Returns:
      As :func:`sam`.
    """
    if not rho > 0 or not eta >= 0:
        raise ValueError(f"asam needs rho > 0 and eta >= 0, got rho={rho}, eta={eta}")
    return _two_pass_sam("asam", inner, adaptive_ascent(rho, eta), batch_axis_name)


def gradient_norm_penalty(
    inner: optax.GradientTransformation, alpha: float = 0.5, radius: float = 0.05, *, batch_axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """Gradient-norm penalty around ``inner``: it steps with ``(1 - alpha) g(w) + alpha g(w + r g / ||g||)``.

    That is the finite-difference gradient of ``L(w) + alpha * r * ||grad L(w)||`` (Zhao et
    al., "Penalizing Gradient Norm for Efficiently Improving Generalization in Deep
    Learning", ICML 2022); ``alpha = 1`` is :func:`sam` with ``rho = radius``.

    Args:
      inner: the optimizer.
      alpha: the weight of the perturbed gradient, in ``[0, 1]``.
      radius: the length ``r`` of the finite-difference step (> 0).
      batch_axis_name: as in :func:`sam`.

    Returns:
      As :func:`sam`; its state is ``inner``'s.
    """
    if not 0 <= alpha <= 1 or not radius > 0:
        raise ValueError(f"gradient_norm_penalty needs 0 <= alpha <= 1 and radius > 0, got alpha={alpha}, radius={radius}")
    inner = optax.with_extra_args_support(inner)

    def update_fn(updates, state, params=None, *, grad_fn: GradFn | None = None, **extra):
        _require_grad_fn("gradient_norm_penalty", grad_fn, params)
        # r * (g / ||g||), in optax.contrib.sam's order of operations (so alpha = 1 is SAM to the bit);
        # a zero gradient moves nowhere.
        unit = _over_norm(updates, optax.tree.norm(updates))
        moved = jax.tree.map(lambda p, u: p + (radius * u).astype(p.dtype), params, unit)
        perturbed = grad_fn(moved)
        if batch_axis_name is not None:
            perturbed = jax.lax.pmean(perturbed, axis_name=batch_axis_name)
        combined = jax.tree.map(lambda g, h: (1 - alpha) * g + alpha * h, updates, perturbed)
        return inner.update(combined, state, params, **extra)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
