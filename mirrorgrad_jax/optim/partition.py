"""An optimizer over two parameter groups, one of which a step may skip entirely.

torch's optimizers skip a parameter whose gradient is ``None`` in a step: no update,
no moment decay, no step count. Since PyTorch 2.0, ``optimizer.zero_grad()`` leaves the
gradient of a parameter the next loss does not use at ``None``, so LATTICE's graph learner
(which gets a gradient only on the first batch of each epoch) is skipped on every other
batch; PyTorch 1.13 wrote zeros instead. In JAX an unused parameter gets a zero gradient,
which Adam turns into a (momentum) step: the 1.13 behaviour, the trainer's default
(``TrainConfig.zero_grad = "zeros"``). For the 2.0 behaviour (``zero_grad = "none"``),
:func:`skippable_partition` reproduces torch: the parameters labelled ``group`` get their
own copy of the inner optimizer (own moments, own step count), and a call with the static
extra argument ``skip=True`` leaves that copy's state unchanged and gives those
parameters a zero update, without computing it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["skippable_partition"]

_OTHERS = "others"


def skippable_partition(inner: optax.GradientTransformation, labels: Any, group: str) -> optax.GradientTransformationExtraArgs:
    """``inner`` applied separately to the parameters labelled ``group`` and to the others.

    Args:
      inner: the optimizer (each part gets its own state, as torch keeps per-parameter state).
      labels: a pytree of strings with the structure of the parameters; leaves equal to
        ``group`` form the skippable part.
      group: the label of the skippable part (not ``"others"``).

    Returns:
      A transformation whose ``update`` takes the static extra argument ``skip`` (a
      Python bool, default False): with ``skip=True`` the group's update is zero and its
      state is left as it was. Other extra arguments are passed to ``inner``.
    """
    if group == _OTHERS:
        raise ValueError(f"the skippable group cannot be called {_OTHERS!r}")
    inner = optax.with_extra_args_support(inner)
    in_group = jax.tree.map(lambda label: label == group, labels)
    parts = {
        _OTHERS: optax.masked(inner, jax.tree.map(lambda m: not m, in_group)),
        group: optax.masked(inner, in_group),
    }

    def init_fn(params):
        # {"others": state, group: state}: a plain dict, so optax's tree utilities see into it.
        return {name: tx.init(params) for name, tx in parts.items()}

    def update_fn(updates, state, params=None, *, skip: bool = False, **extra):
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be a Python bool (a static argument), got {type(skip).__name__}")
        new_state = dict(state)
        out_others, new_state[_OTHERS] = parts[_OTHERS].update(updates, state[_OTHERS], params, **extra)
        if skip:
            combined = jax.tree.map(lambda member, u: jnp.zeros_like(u) if member else u, in_group, out_others)
        else:
            out_group, new_state[group] = parts[group].update(updates, state[group], params, **extra)
            combined = jax.tree.map(lambda member, a, b: b if member else a, in_group, out_others, out_group)
        return combined, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
