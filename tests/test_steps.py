"""The lax.cond-free step functions agree with the opaque transformation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mirrorgrad_jax import is_mirror_batch, mirror_gradient
from mirrorgrad_jax.optim import EpochSegment, epoch_layout, make_block_step, make_train_steps, plan_epoch


def _loss(params, batch, key):
    x, y = batch
    noise = 0.01 * jax.random.normal(key, y.shape)  # stochastic, so the mirror key matters
    return jnp.mean((jnp.tanh(x @ params["w"]) - y + noise) ** 2)


def _batches(n=7):
    rng = np.random.default_rng(3)
    return [(jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)) for _ in range(n)]


def _opaque_reference(batches, keys, beta):
    tx = mirror_gradient(optax.adam(0.05), 1.0, 0.3, beta)
    params = {"w": jnp.ones((4, 2)) * 0.1}
    state = tx.init(params)
    for k, (batch, key) in enumerate(zip(batches, keys)):
        grad_fn = lambda p: jax.grad(_loss)(p, batch, jax.random.fold_in(key, 1))
        u, state = tx.update(jax.grad(_loss)(params, batch, key), state, params, grad_fn=grad_fn, mirror=bool(is_mirror_batch(k, beta)))
        params = optax.apply_updates(params, u)
    return params


def test_transparent_steps_equal_opaque_transformation():
    beta, batches = 3, _batches()
    keys = list(jax.random.split(jax.random.key(0), len(batches)))
    expected = _opaque_reference(batches, keys, beta)
    tx = mirror_gradient(optax.adam(0.05), 1.0, 0.3, beta, mode="transparent")
    steps = make_train_steps(_loss, tx)
    params = {"w": jnp.ones((4, 2)) * 0.1}
    state = tx.init(params)
    for k, (batch, key) in enumerate(zip(batches, keys)):
        step = steps.mirror if is_mirror_batch(k, beta) else steps.normal
        params, state, loss, _ = jax.jit(step)(params, state, batch, key)
        assert loss.shape == ()
    # Same float32 arithmetic, different programs: 1e-6 absolute.
    np.testing.assert_allclose(params["w"], expected["w"], atol=1e-6)
    assert int(state.count) == len(batches) and int(state.phase) == 0


def test_block_step_under_scan_equals_batch_by_batch():
    beta, batches = 3, _batches(6)
    keys = jax.random.split(jax.random.key(1), 6)
    expected = _opaque_reference(batches, list(keys), beta)
    tx = mirror_gradient(optax.adam(0.05), 1.0, 0.3, beta, mode="transparent")
    block = make_block_step(make_train_steps(_loss, tx), beta)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs).reshape((2, beta) + xs[0].shape), *batches)

    def body(carry, xs):
        p, s = carry
        p, s, losses, _ = block(p, s, *xs)
        return (p, s), losses

    params = {"w": jnp.ones((4, 2)) * 0.1}
    (params, _), losses = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), (stacked, keys.reshape(2, beta))))(params, tx.init(params))
    assert losses.shape == (2, beta)
    np.testing.assert_allclose(params["w"], expected["w"], atol=1e-6)


def test_plain_steps_take_no_extra_args():
    steps = make_train_steps(_loss, optax.sgd(0.1), mirror=False)
    assert steps.mirror is steps.normal
    params = {"w": jnp.ones((4, 2))}
    state = optax.sgd(0.1).init(params)
    new, _, _, _ = steps.normal(params, state, _batches(1)[0], jax.random.key(0))
    assert not np.allclose(new["w"], params["w"])


def test_epoch_layout():
    assert epoch_layout(58, 3) == (19, 1)
    assert epoch_layout(6, 3) == (2, 0)
    with pytest.raises(ValueError, match="beta"):
        epoch_layout(5, 0)


def _reference_flags(n: int, beta: int) -> list[bool]:
    return [is_mirror_batch(i, beta, schedule="reference", steps_per_epoch=n) for i in range(n)]


def test_plan_epoch_scans_whole_blocks_and_steps_the_rest():
    # 11 batches, beta 3: blocks 0-2, 3-5, 6-8 in one scan; 9 mirrors, 10 does not.
    assert plan_epoch(_reference_flags(11, 3), 3) == [
        EpochSegment("blocks", 0, 9, True),
        EpochSegment("step", 9, 10, True),
        EpochSegment("step", 10, 11, False),
    ]


def test_plan_epoch_with_a_beta_longer_than_the_epoch_steps_each_batch_without_building_a_block():
    """Batch 0 mirrors and no block of beta fits: single steps (a beta of 1e12 must not allocate a list of 1e12)."""
    assert [tuple(s) for s in plan_epoch([True, False, False], 10**12)] == [("step", 0, 1, True), ("step", 1, 2, False), ("step", 2, 3, False)]
    # the same epoch with beta 3: one block
    assert [tuple(s) for s in plan_epoch([True, False, False], 3)] == [("blocks", 0, 3, True)]


def test_plan_epoch_runs_a_first_batch_alone_and_starts_blocks_at_the_next_block():
    # A model with a first-batch loss: batch 0 alone, 1 and 2 single, blocks from 3.
    assert plan_epoch(_reference_flags(9, 3), 3, first_alone=True) == [
        EpochSegment("step", 0, 1, True),
        EpochSegment("step", 1, 2, False),
        EpochSegment("step", 2, 3, False),
        EpochSegment("blocks", 3, 9, True),
    ]


def test_plan_epoch_without_mirror_batches_is_one_scan_and_without_scans_all_steps():
    assert plan_epoch([False] * 5, 3) == [EpochSegment("scan", 0, 5)]
    assert plan_epoch([False] * 5, 3, first_alone=True) == [EpochSegment("step", 0, 1), EpochSegment("scan", 1, 5)]
    steps = plan_epoch(_reference_flags(7, 3), 3, scan=False)
    assert [s.kind for s in steps] == ["step"] * 7 and [s.mirror for s in steps] == _reference_flags(7, 3)


def test_plan_epoch_covers_every_batch_once_for_any_mirror_pattern():
    rng = np.random.default_rng(0)
    for _ in range(200):
        flags = list(rng.random(int(rng.integers(0, 20))) < 0.4)
        for beta in (1, 2, 3, 5):
            for first_alone in (False, True):
                segments = plan_epoch(flags, beta, first_alone=first_alone)
                covered = [i for s in segments for i in range(s.start, s.stop)]
                assert covered == list(range(len(flags)))
                for s in segments:
                    if s.kind == "blocks":  # every block is [mirror, normal x (beta - 1)]
                        assert (s.stop - s.start) % beta == 0
                        assert flags[s.start : s.stop] == ([True] + [False] * (beta - 1)) * ((s.stop - s.start) // beta)
                    elif s.kind == "step":
                        assert s.mirror == flags[s.start]
                    else:
                        assert not any(flags[s.start : s.stop])
