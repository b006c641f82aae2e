"""Gradient clipping with PyTorch's formula, as the reference trainer clips."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["torch_clip_by_global_norm", "torch_clip_grad_norm"]


def torch_clip_grad_norm(grads: Any, max_norm: float) -> Any:
    """Rescales ``grads`` as ``torch.nn.utils.clip_grad_norm_`` does.

    With ``n`` the global L2 norm over all leaves, every leaf is multiplied by
    ``min(1, max_norm / (n + 1e-6))`` (torch's epsilon; ``optax.clip_by_global_norm``
    uses ``max_norm / max(n, max_norm)``, which differs by that epsilon).
    """
    leaves = jax.tree.leaves(grads)
    if not leaves:
        return grads
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32 if g.dtype != jnp.float64 else g.dtype))) for g in leaves))
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: (g * coef.astype(g.dtype)).astype(g.dtype), grads)


def torch_clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """A stateless transformation applying :func:`torch_clip_grad_norm` to every update.

    For training without Mirror Gradient, where every step is a batch's last (with MG use
    ``mirror_gradient(clip_grad_norm=...)``, which clips only a batch's last gradient).
    """

    def update(updates, state, params=None, **_extra):
        return torch_clip_grad_norm(updates, max_norm), state

    return optax.GradientTransformationExtraArgs(lambda _params: optax.EmptyState(), update)
