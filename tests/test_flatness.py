"""Flatness diagnostics: power iteration, sharpness, filter normalisation, slices, the model loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mirrorgrad_jax.data import epoch_batches, make_synthetic
from mirrorgrad_jax.analysis.flatness import (
    filter_normalized_direction,
    hessian_top_eigenvalue,
    hessian_vector_product,
    loss_slice_1d,
    loss_slice_2d,
    LossSlice,
    model_train_loss,
    sharpness,
)
from mirrorgrad_jax.analysis.plots import plot_slices
from mirrorgrad_jax.models import VBPR, VBPRConfig


def _rotated(eigenvalues, seed=0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return (q * np.asarray(eigenvalues)) @ q.T, q


@pytest.mark.parametrize("eigenvalues, top", [((5.0, 2.0, 1.0), 5.0), ((-6.0, 2.0, 1.0), -6.0)])
def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic(eigenvalues, top):
    a, q = _rotated(eigenvalues)
    a = jnp.asarray(a, jnp.float32)
    x0 = jnp.asarray([0.3, -1.0, 2.0])  # the Hessian of 0.5 x^T A x is A everywhere
    value, vector = hessian_top_eigenvalue(lambda x: 0.5 * x @ a @ x, x0, key=jax.random.key(1))
    # Error ~ (2/5)^(2k) after k steps (<1e-8 for 20); float32 Rayleigh quotients: rtol 1e-3.
    np.testing.assert_allclose(value, top, rtol=1e-3)
    assert abs(float(jnp.vdot(vector, q[:, 0]))) > 1 - 1e-3
    np.testing.assert_allclose(float(jnp.linalg.norm(vector)), 1.0, rtol=1e-5)


def test_power_iteration_on_a_pytree_and_a_zero_hessian():
    diag = {"a": jnp.asarray([[1.0, 3.0], [0.5, 2.0]]), "b": jnp.asarray([7.0, 0.1])}
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    loss = lambda p: 0.5 * sum(jnp.sum(diag[k] * p[k] ** 2) for k in p)  # noqa: E731
    value, vector = hessian_top_eigenvalue(loss, params, iterations=60, key=jax.random.key(0))
    np.testing.assert_allclose(value, 7.0, rtol=1e-3)  # gap 3/7 per step: converged after 60
    assert jax.tree.structure(vector) == jax.tree.structure(params)
    value, _ = hessian_top_eigenvalue(lambda p: jnp.sum(p["a"]) + 1.0, params, key=jax.random.key(0))
    assert value == 0.0


@pytest.mark.parametrize("method", ["sam", "random"])
def test_sharpness_of_a_constant_loss_is_zero(method):
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    out = sharpness(lambda p: jnp.asarray(2.5), params, 0.1, method=method, key=jax.random.key(0))
    assert out == {"sharpness": 0.0, "loss": 2.5, "perturbed_loss": 2.5}


def _quadratic(c):
    return lambda p: 0.5 * c * optax.tree.norm(p, squared=True)


def test_sam_sharpness_matches_the_closed_form_of_a_quadratic():
    c, rho = 2.5, 0.1
    params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.25, -1.0])}
    norm = float(optax.tree.norm(params))
    r = rho * norm
    out = sharpness(_quadratic(c), params, rho, method="sam")
    # L(x0 + r g/|g|) - L(x0) = c (r |x0| + r^2 / 2) since g = c x0; float32: rtol 1e-4.
    np.testing.assert_allclose(out["sharpness"], c * (r * norm + r**2 / 2), rtol=1e-4)
    np.testing.assert_allclose(out["loss"], 0.5 * c * norm**2, rtol=1e-6)
    assert sharpness(_quadratic(c), params, 0.0, method="sam")["sharpness"] == 0.0


def test_random_sharpness_of_a_quadratic_is_between_its_bounds():
    c, rho = 2.0, 0.05
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)), jnp.float32)}
    norm = float(optax.tree.norm(params))
    r = rho * norm
    out = sharpness(_quadratic(c), params, rho, method="random", num_directions=8, key=jax.random.key(3))
    # Along a unit u: c (r |u.x0| + r^2/2), between c r^2/2 (u orthogonal) and SAM's c (r |x0| + r^2/2).
    assert c * r**2 / 2 * (1 - 1e-3) <= out["sharpness"] <= c * (r * norm + r**2 / 2) * (1 + 1e-4)
    # Filter-normalised directions share the parameters' row structure, so they are far from orthogonal.
    assert out["sharpness"] > 2 * c * r**2 / 2


def test_sharpness_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rho must be >= 0"):
        sharpness(_quadratic(1.0), jnp.ones(2), -0.1)
    with pytest.raises(ValueError, match="unknown sharpness method 'adversarial'"):
        sharpness(_quadratic(1.0), jnp.ones(2), 0.1, method="adversarial")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        sharpness(_quadratic(1.0), jnp.ones(2), 0.1, method="random")


def test_filter_normalised_direction_has_the_row_norms_of_the_params():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    w[2] = 0.0  # a zero row gets a zero direction row
    params = {"w": jnp.asarray(w), "e": jnp.asarray(rng.standard_normal((4, 2, 3)), jnp.float32), "b": jnp.ones(3), "s": jnp.asarray(2.0)}
    direction = jax.jit(filter_normalized_direction)
    d = direction(params, jax.random.key(0))
    # float32 norms: rtol 1e-5.
    np.testing.assert_allclose(np.linalg.norm(d["w"], axis=1), np.linalg.norm(w, axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(np.reshape(d["e"], (4, -1)), axis=1), np.linalg.norm(np.reshape(params["e"], (4, -1)), axis=1), rtol=1e-5)
    assert not np.any(d["b"]) and float(d["s"]) == 0.0 and not np.any(d["w"][2])
    # Random, not a copy of the parameters.
    assert not np.allclose(np.abs(d["w"][0]), np.abs(w[0]))
    other = direction(params, jax.random.key(1))
    assert not np.allclose(d["w"], other["w"])


def test_slices_pass_through_the_loss_and_follow_the_quadratic(tmp_path):
    c = 3.0
    params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)), jnp.float32), "b": jnp.ones(3)}
    loss = _quadratic(c)
    s1 = loss_slice_1d(loss, params, key=jax.random.key(0))
    assert isinstance(s1, LossSlice) and s1.alphas.shape == (21,) and s1.alphas[10] == 0.0 and s1.betas is None
    # The mapped, jitted evaluation may fuse differently from the plain call: rtol 1e-6.
    np.testing.assert_allclose(s1.losses[10], float(loss(params)), rtol=1e-6)
    d = filter_normalized_direction(params, jax.random.key(0))
    expected = [0.5 * c * float(optax.tree.norm(optax.tree.add_scale(params, a, d), squared=True)) for a in s1.alphas]
    np.testing.assert_allclose(s1.losses, expected, rtol=1e-5)
    s2 = loss_slice_2d(loss, params, key=jax.random.key(0), points=7)
    assert s2.losses.shape == (7, 7)
    np.testing.assert_allclose(s2.losses[3, 3], float(loss(params)), rtol=1e-6)
    for name, slices in (("one.png", {"a": s1, "b": s1._replace(losses=s1.losses * 2)}), ("two.png", {"a": s2, "b": s2})):
        path = plot_slices(slices, tmp_path / "sub" / name)
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    with pytest.raises(ValueError, match="mix"):
        plot_slices({"a": s1, "b": s2}, tmp_path / "mixed.png")


@pytest.fixture(scope="module")
def tiny():
    ds = make_synthetic(num_users=60, num_items=60, modalities={"image": 6, "text": 4}, seed=1)
    config = VBPRConfig(embedding_size=4)
    model = VBPR(ds, config, rngs=nnx.Rngs(params=3))
    return ds, config, nnx.split(model, nnx.Param, ...)


def test_model_train_loss_is_the_mean_loss_over_fixed_batches(tiny):
    ds, config, (graphdef, params, rest) = tiny
    loss_fn = model_train_loss(VBPR, config, ds, params, seed=4, num_batches=2, batch_size=64)
    value = float(jax.jit(loss_fn)(params))
    assert value == float(jax.jit(loss_fn)(params))  # deterministic
    full = epoch_batches(ds, 64, np.random.default_rng(4)).full[:2]
    keys = jax.random.split(jax.random.key(4), 2)
    one_batch = jax.jit(lambda b, k: nnx.merge(graphdef, params, rest, copy=True).loss(b, k))
    by_hand = np.mean([float(one_batch(jnp.asarray(b), k)) for b, k in zip(full, keys)])
    np.testing.assert_allclose(value, by_hand, rtol=1e-6)  # float32 mean of two losses
    wrong = jax.tree.map(lambda x: x[:1] if x.ndim == 2 else x, params)
    with pytest.raises(ValueError, match="mismatch in the trained state of VBPR"):
        model_train_loss(VBPR, config, ds, wrong, seed=0)


def test_hessian_vector_product_of_the_model_matches_reverse_over_reverse(tiny):
    # VBPR's projection is a custom_vjp: forward-over-reverse must go through its backward rule.
    ds, config, (_, params, _) = tiny
    loss_fn = model_train_loss(VBPR, config, ds, params, seed=0, num_batches=1, batch_size=64)
    v = optax.tree.random_like(jax.random.key(5), params)
    fwd = jax.jit(lambda p, v: hessian_vector_product(loss_fn, p, v))(params, v)
    rev = jax.jit(lambda p, v: jax.grad(lambda q: optax.tree.vdot(jax.grad(loss_fn)(q), v))(p))(params, v)
    # Two float32 evaluation orders of the same product: 1e-4 of the largest entry.
    scale = float(optax.tree.max(jax.tree.map(jnp.abs, rev)))
    for a, b in zip(jax.tree.leaves(fwd), jax.tree.leaves(rev)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def test_model_train_loss_of_a_first_batch_model_reaches_every_parameter_as_an_epoch_does(tiny):
    """LATTICE's graph learner is trained from each epoch's first batch alone, through
    ``first_batch_loss``; ``loss`` reads its graph detached. The measured loss is the
    epoch's: the first batch through ``first_batch_loss``, the second through ``loss`` on the
    graph that call cached, so every parameter has a gradient (with ``loss`` alone the
    graph learner's would all be exactly zero)."""
    from mirrorgrad_jax.models.lattice import LATTICE, LATTICEConfig
    from mirrorgrad_jax.train.trained import trained_state

    ds = tiny[0]
    config = LATTICEConfig(embedding_size=4, feat_embed_dim=4, knn_k=3)
    model = LATTICE(ds, config, rngs=nnx.Rngs(params=2))
    state = trained_state(model)
    params = nnx.state(model, nnx.Param)
    loss_fn = model_train_loss(LATTICE, config, ds, state, seed=4, num_batches=2, batch_size=64)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    learner = nnx.state(model.graph_learner, nnx.Param)
    assert len(jax.tree.leaves(learner)) > 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(leaf))) > 0, f"no gradient on {jax.tree_util.keystr(path)}"

    full = epoch_batches(ds, 64, np.random.default_rng(4), negatives=LATTICE.uses_negatives).full[:2]
    keys = jax.random.split(jax.random.key(4), 2)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    by_hand = nnx.merge(graphdef, params, rest, copy=True)
    head = float(by_hand.first_batch_loss(jnp.asarray(full[0]), keys[0]))
    tail = float(by_hand.loss(jnp.asarray(full[1]), keys[1]))  # on the graph the first call cached
    np.testing.assert_allclose(float(value), (head + tail) / 2, rtol=1e-5)  # float32, other evaluation order
