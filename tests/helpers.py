"""Small builders and checks shared by the model tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_batch(ds, n: int = 16, seed: int = 0) -> jnp.ndarray:
    """An int32 (3, n) batch [users; positives; random items] of distinct train rows."""
    rng = np.random.default_rng(seed)
    rows = ds.train[rng.choice(len(ds.train), n, replace=False)]
    return jnp.asarray(np.stack([rows[:, 0], rows[:, 1], rng.integers(0, ds.num_items, n)]), jnp.int32)


# Forward passes are jitted: on CPU one compile costs less than dispatching the ops one by one.
jit_representation = nnx.jit(lambda model: model.representation())
jit_scores = nnx.jit(lambda model, users: model.scores(users))
jit_loss = nnx.jit(lambda model, batch, key: model.loss(batch, key))


@functools.partial(jax.jit, static_argnums=0)
def grads_constants_fixed(graphdef, params, rest, batch):
    """d loss / d params with the constants (``rest``) held fixed, as the trainer differentiates."""
    return jax.grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0)))(params)


def check_stale_eval(make_model, ds, branch: str) -> None:
    """With ``stale_eval`` the ranking uses the last training forward; without it, the current parameters.

    ``make_model(ds, stale_eval=...)`` builds the model; ``branch`` names the module whose
    ``pref`` table is changed after one training forward. Tolerances: the recomputed scores
    agree to float32 rounding (1e-6); a stale ranking must differ from them by > 1e-4.
    """
    batch = random_batch(ds)
    for stale in (False, True):
        model = make_model(ds, stale_eval=stale)
        jit_loss(model, batch, jax.random.key(0))
        before = np.asarray(jit_scores(model, jnp.arange(5)))
        module = getattr(model, branch)
        module.pref[...] = module.pref[...] * 3.0 + 0.1
        after = np.asarray(jit_scores(model, jnp.arange(5)))
        fresh = np.asarray(jit_representation(model))
        recomputed = fresh[:5] @ fresh[ds.num_users :].T
        if stale:
            np.testing.assert_array_equal(after, before)
            assert np.abs(after - recomputed).max() > 1e-4
        else:
            np.testing.assert_allclose(after, recomputed, rtol=1e-6, atol=1e-6)
