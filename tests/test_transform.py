"""Tests of the Mirror Gradient optax transformation against hand-written references."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mirrorgrad_jax import (
    implicit_penalty,
    is_mirror_batch,
    mirror_gradient,
    mirror_pass_pending,
)

# ---------------------------------------------------------------------------------------
# A small float64 problem: L2-regularised logistic regression on fixed mini-batches.
# The numpy gradient is written by hand so the reference loop does not depend on JAX.

_RNG = np.random.default_rng(0)
_DIM = 5
_BATCHES = [(_RNG.normal(size=(8, _DIM)), np.sign(_RNG.normal(size=8))) for _ in range(7)]
_W0 = _RNG.normal(size=_DIM) * 0.3


def _np_grad(w, batch):
    x, y = batch
    margin = y * (x @ w)
    # d/dw mean(log(1 + exp(-m))) = mean(-y x sigmoid(-m))
    return -(x * (y / (1.0 + np.exp(margin)))[:, None]).mean(0) + 0.02 * w


def _jax_loss(w, batch):
    x, y = batch
    return jnp.mean(jnp.logaddexp(0.0, -y * (x @ w))) + 0.01 * jnp.sum(w * w)


# Hand-written numpy optimizers with torch's formulas: step(state, grad) -> (delta, state).
def _np_sgd(lr):
    return (lambda w: None), (lambda s, g, w: (-lr * g, s))


def _np_adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    def step(s, g, w):
        t, m, v = s
        t, m, v = t + 1, b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        return -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), (t, m, v)

    return (lambda w: (0, np.zeros_like(w), np.zeros_like(w))), step


def _np_rmsprop(lr, alpha=0.99, eps=1e-8):
    def step(v, g, w):
        v = alpha * v + (1 - alpha) * g * g
        return -lr * g / (np.sqrt(v) + eps), v

    return np.zeros_like, step


def _np_adagrad(lr):
    def step(acc, g, w):
        acc = acc + g * g
        return -lr * g / np.sqrt(acc), acc

    return np.zeros_like, step


# (hand-written numpy optimizer, the optax optimizer with the same formulas)
OPTIMIZERS = {
    "sgd": (_np_sgd(0.1), optax.sgd(0.1)),
    "adam": (_np_adam(0.05), optax.adam(0.05)),
    "rmsprop": (_np_rmsprop(0.01), optax.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False)),
    "adagrad": (_np_adagrad(0.1), optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)),
}


def _reference_loop(np_opt, *, alpha1, alpha2, beta, apply_to, schedule, epochs, batches=_BATCHES):
    """A literal port of the reference trainer's batch loop (``common/trainer.py``), in numpy.

    apply_to='gradient' is exactly the reference (scale the loss, i.e. the gradient,
    before optimizer.step()); 'update' scales the optimizer's own step instead.
    """
    init, step = np_opt
    w, s, t = _W0.copy(), init(_W0), 0
    for _ in range(epochs):
        for batch_idx, batch in enumerate(batches):
            t += 1
            mirror = batch_idx % beta == 0 if schedule == "reference" else t % beta == 0
            if mirror:
                g = _np_grad(w, batch)
                if apply_to == "gradient":
                    d, s = step(s, alpha1 * g, w)
                    w = w + d
                    d, s = step(s, -alpha2 * _np_grad(w, batch), w)
                    w = w + d
                else:
                    d, s = step(s, g, w)
                    w = w + alpha1 * d
                    d, s = step(s, _np_grad(w, batch), w)
                    w = w - alpha2 * d
            else:
                d, s = step(s, _np_grad(w, batch), w)
                w = w + d
    return w


def _run_optax(tx, *, mode, dispatch, beta, schedule, epochs, batches=_BATCHES):
    """Drives a mirror_gradient transformation over the same batches under jit."""
    jbatches = [tuple(jnp.asarray(a) for a in b) for b in batches]
    params = jnp.asarray(_W0)
    state = tx.init(params)

    @functools.partial(jax.jit, static_argnames="mirror")
    def opaque_step(params, state, batch, mirror=None):
        grads = jax.grad(_jax_loss)(params, batch)
        extra = {} if mirror is None else {"mirror": mirror}
        updates, state = tx.update(grads, state, params, grad_fn=lambda p: jax.grad(_jax_loss)(p, batch), **extra)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def transparent_step(params, state, batch):
        updates, state = tx.update(jax.grad(_jax_loss)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    steps_per_epoch, count = len(batches), 0
    for _ in range(epochs):
        for batch in jbatches:
            if mode == "opaque":
                mirror = None
                if dispatch == "static":
                    mirror = bool(is_mirror_batch(count, beta, schedule=schedule, steps_per_epoch=steps_per_epoch))
                params, state = opaque_step(params, state, batch, mirror=mirror)
            else:
                params, state = transparent_step(params, state, batch)
                if bool(mirror_pass_pending(state)):
                    params, state = transparent_step(params, state, batch)
            count += 1
    return np.asarray(params), state


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("apply_to", ["gradient", "update"])
@pytest.mark.parametrize("schedule", ["reference", "algorithm1"])
@pytest.mark.parametrize("mode,dispatch", [("opaque", "static"), ("opaque", "cond"), ("transparent", "dynamic")])
def test_equals_literal_reference_loop_float64(opt_name, apply_to, schedule, mode, dispatch):
    # float64 on both sides and the same formulas: only rounding differs, so 1e-12 is
    # loose by ~3 orders of magnitude yet catches any missed or extra step.
    np_opt, optax_opt = OPTIMIZERS[opt_name]
    alpha1, alpha2, beta, epochs = 1.0, 0.3, 3, 3
    expected = _reference_loop(np_opt, alpha1=alpha1, alpha2=alpha2, beta=beta, apply_to=apply_to, schedule=schedule, epochs=epochs)
    with jax.enable_x64(True):
        tx = mirror_gradient(
            optax_opt, alpha1, alpha2, beta, mode=mode, apply_to=apply_to, schedule=schedule, steps_per_epoch=len(_BATCHES)
        )
        got, state = _run_optax(tx, mode=mode, dispatch=dispatch, beta=beta, schedule=schedule, epochs=epochs)
    assert got.dtype == np.float64
    np.testing.assert_array_less(np.abs(got - expected).max(), 1e-12)
    assert int(state.count) == epochs * len(_BATCHES)
    assert int(state.phase) == 0


def test_reference_schedule_mirrors_first_batch_of_every_epoch():
    mirrors = [i for i in range(14) if is_mirror_batch(i, 3, schedule="reference", steps_per_epoch=7)]
    assert mirrors == [0, 3, 6, 7, 10, 13]
    assert [i for i in range(9) if is_mirror_batch(i, 3, schedule="algorithm1")] == [2, 5, 8]
    assert [i for i in range(14) if is_mirror_batch(i, 3, schedule="global")] == [0, 3, 6, 9, 12]


def _mirrored_batches(tx, n):
    """Which of ``n`` batches the transformation's own counter mirrors (SGD, a constant gradient)."""
    state, params, out = tx.init(jnp.zeros(2)), jnp.zeros(2), []
    grad_fn = lambda p: jnp.ones(2)  # noqa: E731
    for _ in range(n):
        updates, state = tx.update(jnp.ones(2), state, params, grad_fn=grad_fn)
        out.append(not np.allclose(updates, -0.1 * jnp.ones(2)))
    return [i for i, mirrored in enumerate(out) if mirrored]


def test_default_schedule_is_explicit_about_epochs():
    # Without steps_per_epoch nobody knows where an epoch starts: the default is "global"
    # (batches 0, beta, 2 beta... of the run). With it, the index restarts every epoch.
    assert _mirrored_batches(mirror_gradient(optax.sgd(0.1), 1.0, 0.2, 3), 10) == [0, 3, 6, 9]
    assert _mirrored_batches(mirror_gradient(optax.sgd(0.1), 1.0, 0.2, 3, steps_per_epoch=4), 10) == [0, 3, 4, 7, 8]


@pytest.mark.parametrize("mode", ["opaque", "transparent"])
def test_clip_grad_norm_clips_only_the_last_step_of_a_batch(mode):
    # SGD lr 1, alpha1 1, alpha2 0.5, gradients of norm 10 clipped to norm 1 (torch formula):
    # a mirror batch moves by -g (alpha1 step, unclipped) + clip(0.5 g') ; a normal one by -clip(g).
    g = jnp.array([6.0, 8.0])
    tx = mirror_gradient(optax.sgd(1.0), 1.0, 0.5, 2, mode=mode, steps_per_epoch=2, clip_grad_norm=1.0)
    state, params, moves = tx.init(jnp.zeros(2)), jnp.zeros(2), []
    for batch in range(2):
        if mode == "opaque":
            updates, state = tx.update(g, state, params, grad_fn=lambda p: g)
            moves.append(np.asarray(updates))
        else:
            moved = params
            updates, state = tx.update(g, state, moved)
            moved = optax.apply_updates(moved, updates)
            if bool(mirror_pass_pending(state)):
                updates, state = tx.update(g, state, moved)
                moved = optax.apply_updates(moved, updates)
            moves.append(np.asarray(moved - params))
    unit = np.asarray(g) / 10.0
    coef = 1.0 / (10.0 + 1e-6)  # torch's max_norm / (norm + 1e-6)
    # Batch 0 mirrors: -g (never clipped) + clip(0.5 g) = -g + 0.5 g * min(1, 1 / (5 + 1e-6)).
    np.testing.assert_allclose(moves[0], -np.asarray(g) + 0.5 * np.asarray(g) / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(moves[1], -np.asarray(g) * coef, rtol=1e-6)
    assert np.linalg.norm(moves[1]) == pytest.approx(np.linalg.norm(unit), rel=1e-5)


def test_adam_inner_count_advances_twice_on_mirror_batches():
    # Reference semantics 2: after N batches the inner count is N + ceil(N / beta).
    tx = mirror_gradient(optax.adam(1e-3), 1.0, 0.2, 3)
    params, state = jnp.ones(3), None
    state = tx.init(params)
    grad_fn = jax.grad(lambda p: jnp.sum(p**2))
    for _ in range(10):
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        params = optax.apply_updates(params, updates)
    adam_state = state.inner_state[0]
    assert int(adam_state.count) == 10 + math.ceil(10 / 3)


@pytest.mark.parametrize("apply_to", ["gradient", "update"])
def test_sgd_equals_algorithm1_closed_form(apply_to):
    # On a quadratic L = 0.5 x'Ax - b'x both variants ARE Algorithm 1; float32, 40 steps of
    # a contraction: rounding stays below 1e-5 relative.
    a = jnp.array([[3.0, 0.5], [0.5, 1.0]])
    b = jnp.array([1.0, -2.0])
    eta, a1, a2, beta = 0.1, 1.0, 0.25, 3
    grad = lambda x: a @ x - b
    x_ref = jnp.array([2.0, 2.0])
    for t in range(1, 41):
        if t % beta == 0:
            x_mid = x_ref - a1 * eta * grad(x_ref)
            x_ref = x_mid + a2 * eta * grad(x_mid)
        else:
            x_ref = x_ref - eta * grad(x_ref)
    tx = mirror_gradient(optax.sgd(eta), a1, a2, beta, apply_to=apply_to, schedule="algorithm1")
    x = jnp.array([2.0, 2.0])
    state = tx.init(x)
    for _ in range(40):
        u, state = tx.update(grad(x), state, x, grad_fn=grad)
        x = optax.apply_updates(x, u)
    np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-6)


def test_inner_may_be_a_chain_and_mg_may_sit_in_a_chain():
    # Weight decay inside `inner` sees both sub-steps, like torch; clipping inside `inner` clips both
    # sub-steps too, which the reference does NOT (it clips only the last; see clip_grad_norm).
    inner = optax.chain(optax.clip_by_global_norm(0.5), optax.add_decayed_weights(1e-2), optax.adam(0.05))
    np_adam_init, np_adam_step = _np_adam(0.05)

    def np_inner_step(s, g, w):
        norm = np.sqrt(np.sum(g * g))
        g = g * min(1.0, 0.5 / norm)
        return np_adam_step(s, g + 1e-2 * w, w)

    expected = _reference_loop((np_adam_init, np_inner_step), alpha1=1.0, alpha2=0.2, beta=3, apply_to="gradient", schedule="reference", epochs=2)
    with jax.enable_x64(True):
        tx = optax.chain(mirror_gradient(inner, 1.0, 0.2, 3, steps_per_epoch=len(_BATCHES)))
        got, _ = _run_optax(tx, mode="opaque", dispatch="static", beta=3, schedule="reference", epochs=2)
    np.testing.assert_array_less(np.abs(got - expected).max(), 1e-12)


def test_inject_hyperparams_schedule_on_alpha2():
    alpha2_schedule = lambda count: 0.1 + 0.05 * (count % 4)  # varies every batch
    tx = optax.inject_hyperparams(mirror_gradient, static_args=("beta",))(
        inner=optax.sgd(0.1), alpha1=1.0, alpha2=alpha2_schedule, beta=3
    )
    loss = lambda p: jnp.sum(jnp.sin(p) + 0.5 * p**2)
    grad = jax.grad(loss)
    x = jnp.array([1.0, -0.5])
    state = tx.init(x)
    step = jax.jit(lambda x, s: tx.update(grad(x), s, x, grad_fn=grad))
    x_ref = np.array([1.0, -0.5])
    np_grad = lambda v: np.cos(v) + v
    for batch in range(8):
        u, state = step(x, state)
        x = optax.apply_updates(x, u)
        if batch % 3 == 0:
            mid = x_ref - 0.1 * np_grad(x_ref)
            x_ref = mid + alpha2_schedule(batch) * 0.1 * np_grad(mid)
        else:
            x_ref = x_ref - 0.1 * np_grad(x_ref)
    # float32 vs float64 over 8 steps of size ~0.1: 1e-5 absolute.
    np.testing.assert_allclose(x, x_ref, atol=1e-5)
    # The state records the value used by the last (8th, count 7) update.
    assert float(state.hyperparams["alpha2"]) == pytest.approx(alpha2_schedule(7))


def test_unknown_extra_args_are_accepted_without_recompiling():
    tx = mirror_gradient(optax.adam(1e-2))
    traces = []

    @jax.jit
    def step(params, state, something_else):
        traces.append(1)
        g = jax.grad(lambda p: jnp.sum(p**2))(params)
        return tx.update(g, state, params, grad_fn=jax.grad(lambda p: jnp.sum(p**2)), something_else=something_else)

    params = jnp.ones(4)
    state = tx.init(params)
    _, state = step(params, state, jnp.float32(1.0))
    _, state = step(params, state, jnp.float32(2.0))
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("mode", ["opaque", "transparent"])
@pytest.mark.parametrize("apply_to", ["gradient", "update"])
def test_dtypes_preserved(dtype, mode, apply_to):
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros(2, dtype)}
    loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] - 1.0)
    tx = optax.inject_hyperparams(mirror_gradient, static_args=("beta", "mode", "apply_to"))(
        inner=optax.adam(1e-2), alpha1=1.0, alpha2=0.2, beta=1, mode=mode, apply_to=apply_to
    )
    state = tx.init(params)
    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, state, params, grad_fn=jax.grad(loss))
    chex.assert_trees_all_equal_dtypes(updates, params)


@pytest.mark.parametrize("mode", ["opaque", "transparent"])
def test_state_shapes_and_dtypes_stable_and_map_params_works(mode):
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    loss = lambda p: jnp.sum(jnp.tanh(p["w"])) + jnp.sum(p["b"] ** 2)
    tx = mirror_gradient(optax.adam(1e-2), mode=mode, beta=2)
    state0 = tx.init(params)
    state = state0
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss)))
    for _ in range(5):
        u, state = step(params, state)
        params = optax.apply_updates(params, u)
    chex.assert_trees_all_equal_shapes_and_dtypes(state0, state)
    mapped = optax.tree.map_params(tx, lambda p: jnp.zeros_like(p, jnp.bfloat16), state)
    assert mapped.inner_state[0].mu["w"].dtype == jnp.bfloat16
    assert mapped.count.dtype == jnp.int32  # non-parameter leaves untouched


def _scan_optimise(tx, loss, x0, steps, mode):
    """Runs `steps` update calls under lax.scan on a deterministic full-batch loss.

    In transparent mode every call is one inner step and the mirror pass is simply the
    next call (same data, new parameters), so one call per scan iteration suffices.
    """
    grad = jax.grad(loss)

    def call(carry, _):
        x, s = carry
        extra = {"grad_fn": grad} if mode == "opaque" else {}
        u, s = tx.update(grad(x), s, x, **extra)
        return (optax.apply_updates(x, u), s), None

    (x, _), _ = jax.lax.scan(call, (x0, tx.init(x0)), None, length=steps)
    return x


@pytest.mark.parametrize("mode", ["opaque", "transparent"])
def test_converges_on_quadratic_under_scan(mode):
    loss = lambda x: jnp.sum((x - jnp.array([1.0, -2.0, 3.0])) ** 2)
    tx = mirror_gradient(optax.sgd(0.1), 1.0, 0.2, 3, mode=mode)
    x = jax.jit(lambda x0: _scan_optimise(tx, loss, x0, 200, mode))(jnp.zeros(3))
    np.testing.assert_allclose(x, [1.0, -2.0, 3.0], atol=1e-4)


@pytest.mark.parametrize("mode", ["opaque", "transparent"])
def test_converges_on_rosenbrock_under_scan(mode):
    loss = lambda x: (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2
    tx = mirror_gradient(optax.adam(1e-2), 1.0, 0.2, 3, mode=mode)
    x = jax.jit(lambda x0: _scan_optimise(tx, loss, x0, 6000, mode))(jnp.array([-1.0, 1.5]))
    # Adam at lr 1e-2 hovers within ~1e-2 of the minimum; a diverged or stalled run is far off.
    np.testing.assert_allclose(x, [1.0, 1.0], atol=5e-2)


def test_implicit_regulariser_error_is_third_order():
    # One MG iteration (SGD) vs one GD step of size (a1-a2)*eta on L + lam*||grad L||^2:
    # they agree to O(eta^3), so halving eta divides the gap by ~8.
    with jax.enable_x64(True):
        loss = lambda x: jnp.sum(jnp.log(jnp.cosh(x))) + 0.3 * jnp.sum(x**4) + x[0] * x[1]
        grad = jax.grad(loss)
        x0 = jnp.array([0.7, -0.4, 1.1])
        a1, a2 = 1.0, 0.3

        def gap(eta):
            tx = mirror_gradient(optax.sgd(eta), a1, a2, 1)
            u, _ = tx.update(grad(x0), tx.init(x0), x0, grad_fn=grad)
            mg = x0 + u
            lam = implicit_penalty(a1, a2, eta)
            penalised = lambda x: loss(x) + lam * jnp.sum(grad(x) ** 2)
            gd = x0 - (a1 - a2) * eta * jax.grad(penalised)(x0)
            return float(jnp.linalg.norm(mg - gd))

        ratios = [gap(eta) / gap(eta / 2) for eta in (0.02, 0.01)]
    assert all(6.5 < r < 9.5 for r in ratios), ratios


def test_implicit_penalty_value_and_condition():
    assert implicit_penalty(1.0, 0.2, 0.1) == pytest.approx(1.0 * 0.2 * 0.1 / (2 * 0.8))
    with pytest.raises(ValueError, match="alpha1 > alpha2"):
        implicit_penalty(0.2, 0.2, 0.1)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"beta": 0}, ValueError, "beta must be >= 1"),
        ({"beta": 2.0}, TypeError, "beta must be a Python int"),
        ({"alpha1": 0.0}, ValueError, "alpha1 must be > 0"),
        ({"alpha2": -0.1}, ValueError, "alpha2 must be > 0"),
        ({"alpha1": 0.2, "alpha2": 0.3}, ValueError, "allow_ascent=True"),
        ({"mode": "magic"}, ValueError, "mode must be"),
        ({"apply_to": "loss"}, ValueError, "apply_to must be"),
        ({"schedule": "epoch"}, ValueError, "schedule must be"),
        ({"steps_per_epoch": 0}, ValueError, "steps_per_epoch"),
        ({"schedule": "reference"}, ValueError, "needs steps_per_epoch"),
        ({"clip_grad_norm": 0.0}, ValueError, "clip_grad_norm must be a positive number"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        mirror_gradient(optax.sgd(0.1), **kwargs)


def test_alpha2_above_alpha1_warns_when_allowed():
    with pytest.warns(UserWarning, match="alpha1 > alpha2"):
        mirror_gradient(optax.sgd(0.1), alpha1=0.2, alpha2=0.3, allow_ascent=True)


def test_multisteps_is_refused():
    with pytest.raises(TypeError, match="MultiSteps"):
        mirror_gradient(optax.MultiSteps(optax.sgd(0.1), 2))


def test_opaque_use_without_grad_fn_or_params_is_refused():
    tx = mirror_gradient(optax.sgd(0.1))
    p = jnp.ones(2)
    s = tx.init(p)
    with pytest.raises(ValueError, match="needs the extra argument grad_fn"):
        tx.update(p, s, p)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(p, s, None, grad_fn=lambda q: q)
    with pytest.raises(TypeError, match="must be a Python bool"):
        tx.update(p, s, p, grad_fn=lambda q: q, mirror=jnp.array(True))


def test_normal_batch_does_not_call_grad_fn_under_static_dispatch():
    calls = []

    def grad_fn(p):
        calls.append(1)
        return p

    tx = mirror_gradient(optax.sgd(0.1))
    p = jnp.ones(2)
    s = tx.init(p)
    tx.update(p, s, p, grad_fn=grad_fn, mirror=False)
    assert calls == []
    tx.update(p, s, p, grad_fn=grad_fn, mirror=True)
    assert calls == [1]


_SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, PartitionSpec as P
    from mirrorgrad_jax import mirror_gradient
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=16), jnp.float32)
    loss = lambda w, x, y: jnp.mean((x @ w - y) ** 2 + jnp.sin(x @ w))
    w0 = jnp.array([0.3, -0.2, 0.5])
    tx = mirror_gradient(optax.adam(0.1), 1.0, 0.3, 1, batch_axis_name="data")
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def local_step(w, s, x, y):
        g = jax.lax.pmean(jax.grad(loss)(w, x, y), "data")
        u, s = tx.update(g, s, w, grad_fn=lambda p: jax.grad(loss)(p, x, y))
        return optax.apply_updates(w, u), s

    step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P()), check_vma=False))
    w, s = w0, tx.init(w0)
    for _ in range(3):
        w, s = step(w, s, x, y)
    # Full-batch reference on one device: equal shards, so mean of shard gradients == full gradient.
    tx1 = mirror_gradient(optax.adam(0.1), 1.0, 0.3, 1)
    w1, s1 = w0, tx1.init(w0)
    for _ in range(3):
        u, s1 = tx1.update(jax.grad(loss)(w1, x, y), s1, w1, grad_fn=lambda p: jax.grad(loss)(p, x, y))
        w1 = optax.apply_updates(w1, u)
    # Without the pmean the mirror gradient would be a shard's, off by ~1e-1 here.
    print("MAXDIFF", float(jnp.max(jnp.abs(w - w1))))
    """
)


def test_mirror_gradient_is_averaged_under_shard_map():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(out.stdout.split("MAXDIFF")[1])
    # float32 reductions in a different order: 1e-5 absolute after three Adam steps of 0.1.
    assert diff < 1e-5, diff
