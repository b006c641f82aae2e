"""The NNX train step against a hand-written NNX loop of the reference trainer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mirrorgrad_jax import find_mirror_state, is_mirror_batch, mirror_gradient
from mirrorgrad_jax.optim import make_nnx_train_step, nnx_grad_fn


class _TwoLayer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros([], jnp.int32))  # a non-Param variable

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))[:, 0]


def _loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _data(n_batches=5):
    rng = np.random.default_rng(1)
    return [(jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), jnp.asarray(rng.normal(size=16), jnp.float32)) for _ in range(n_batches)]


def _hand_written_reference(alpha1, alpha2, beta, epochs):
    """Reference trainer in NNX by hand: plain Adam, two optimizer steps on mirror batches."""
    model = _TwoLayer(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    data = _data()
    for _ in range(epochs):
        for b, (x, y) in enumerate(data):
            grads = nnx.grad(_loss)(model, x, y)
            if b % beta == 0:
                opt.update(model, jax.tree.map(lambda g: alpha1 * g, grads))
                grads = nnx.grad(_loss)(model, x, y)
                opt.update(model, jax.tree.map(lambda g: -alpha2 * g, grads))
            else:
                opt.update(model, grads)
    return model


@pytest.mark.parametrize("static_dispatch", [True, False])
def test_nnx_train_step_equals_hand_written_loop(static_dispatch):
    alpha1, alpha2, beta, epochs = 1.0, 0.3, 3, 2
    expected = _hand_written_reference(alpha1, alpha2, beta, epochs)
    data = _data()
    model = _TwoLayer(nnx.Rngs(0))
    opt = nnx.Optimizer(model, mirror_gradient(optax.adam(1e-2), alpha1, alpha2, beta, steps_per_epoch=len(data)), wrt=nnx.Param)
    step = make_nnx_train_step(_loss)
    count = 0
    for _ in range(epochs):
        for x, y in data:
            mirror = bool(is_mirror_batch(count, beta, steps_per_epoch=len(data))) if static_dispatch else None
            step(model, opt, x, y, mirror=mirror)
            count += 1
    got = nnx.state(model, nnx.Param)
    want = nnx.state(expected, nnx.Param)
    # Same float32 operations in a different program: agree to a few ulps, 1e-6 absolute.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert int(find_mirror_state(opt.opt_state).count[...]) == epochs * len(data)


def test_nnx_train_step_with_plain_optimizer():
    model = _TwoLayer(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    x, y = _data(1)[0]
    before = _loss(model, x, y)
    step = make_nnx_train_step(_loss)
    for _ in range(5):
        step(model, opt, x, y)
    assert float(_loss(model, x, y)) < float(before)


def test_nnx_grad_fn_is_pure_and_matches_nnx_grad():
    model = _TwoLayer(nnx.Rngs(0))
    x, y = _data(1)[0]
    params = nnx.state(model, nnx.Param)
    grad_fn = nnx_grad_fn(model, _loss, x, y)
    shifted = jax.tree.map(lambda p: p + 0.1, params)
    g_shifted = grad_fn(shifted)
    # The live model is untouched by evaluating at other parameters.
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    nnx.update(model, shifted)
    want = nnx.grad(_loss)(model, x, y)
    for a, b in zip(jax.tree.leaves(g_shifted), jax.tree.leaves(nnx.state(want, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


class _DroppedVector(nnx.Module):
    """``sum(dropout(w))``: with SGD the parameter change reveals each pass's dropout mask."""

    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jnp.zeros(64))
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self):
        return jnp.sum(self.drop(self.w[...]))


def test_mirror_pass_and_next_batch_draw_fresh_dropout_masks():
    # SGD lr 1, alpha1 1, alpha2 0.5, dropout 0.5 (kept entries scaled by 2): a mirror batch
    # moves w by -2 m1 + 1 m2 and a normal batch by -2 m3, so the masks m1 (first pass),
    # m2 (mirror pass) and m3 (next batch) can be read back exactly from the changes.
    model = _DroppedVector(nnx.Rngs(0, dropout=1))
    opt = nnx.Optimizer(model, mirror_gradient(optax.sgd(1.0), 1.0, 0.5, 3, steps_per_epoch=3), wrt=nnx.Param)
    step = make_nnx_train_step(lambda m: m())
    w0 = np.asarray(model.w[...])
    step(model, opt, mirror=True)
    w1 = np.asarray(model.w[...])
    step(model, opt, mirror=False)
    w2 = np.asarray(model.w[...])
    d1, d2 = w1 - w0, w2 - w1
    assert set(np.round(d1, 6)) <= {0.0, -2.0, 1.0, -1.0} and set(np.round(d2, 6)) <= {0.0, -2.0}
    m1 = np.isin(np.round(d1, 6), (-2.0, -1.0))
    m2 = np.isin(np.round(d1, 6), (1.0, -1.0))
    m3 = np.round(d2, 6) == -2.0
    # Independent masks over 64 entries coincide with probability 2**-64.
    assert not np.array_equal(m1, m2), "the mirror pass reused the first pass's mask"
    assert not np.array_equal(m3, m2), "the next batch reused the mirror pass's mask"
    assert not np.array_equal(m3, m1)
