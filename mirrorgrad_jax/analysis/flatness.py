"""Flatness diagnostics of a loss at given parameters: curvature, sharpness, loss slices.

The Mirror Gradient paper argues that MG finds flatter minima (an implicit
gradient-norm penalty, :func:`mirrorgrad_jax.implicit_penalty`). These tools measure flatness directly on a
pure loss ``loss_fn(params) -> scalar`` over any pytree of float arrays (an
``nnx.State`` of ``nnx.Param`` included):

* :func:`hessian_top_eigenvalue`: ``lambda_max`` by power iteration on Hessian-vector
  products (forward-over-reverse, all inside one ``jax.jit``);
* :func:`sharpness`: the worst loss increase within a ball whose radius is RELATIVE to
  the parameter norm, along the SAM ascent direction or random filter-normalised ones;
* :func:`loss_slice_1d` / :func:`loss_slice_2d`: the loss along filter-normalised
  random directions (Li et al., 2018, "Visualizing the Loss Landscape of Neural
  Nets"), drawn by :func:`mirrorgrad_jax.analysis.plots.plot_slices`;
* :func:`model_train_loss`: a deterministic training loss of a recommender, to feed the
  above (fixed batches, fixed negatives, fixed key).

Example::

    loss_fn = model_train_loss(VBPR, VBPRConfig(), ds, params, seed=0)
    lam, _ = hessian_top_eigenvalue(loss_fn, params, key=jax.random.key(0))
    sharp = sharpness(loss_fn, params, 0.01, method="sam")["sharpness"]
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mirrorgrad_jax.data import RecDataset, epoch_batches

__all__ = [
    "LossSlice",
    "check_params_fit",
    "filter_normalized_direction",
    "hessian_top_eigenvalue",
    "hessian_vector_product",
    "loss_slice_1d",
    "loss_slice_2d",
    "model_train_loss",
    "sharpness",
]

LossFn = Callable[[Any], jax.Array]
SHARPNESS_METHODS = ("sam", "random")
# Compiled diagnostics are cached per loss function (a few, since a loss closes over its
# batches and constants), so measuring several parameter sets of one model compiles once.
_COMPILED_CACHE = 4


class LossSlice(NamedTuple):
    """Losses along one or two directions through the parameters.

    Attributes:
      alphas: ``(n,)`` coefficients of the first direction.
      losses: ``(n,)`` for a 1-D slice, ``(n, m)`` for a 2-D one, where ``losses[i, j]``
        is the loss at ``params + alphas[i] * d1 + betas[j] * d2``.
      betas: ``(m,)`` coefficients of the second direction; ``None`` for a 1-D slice.
    """

    alphas: np.ndarray
    losses: np.ndarray
    betas: np.ndarray | None = None


def _safe_scale(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator``, and 0 where the denominator is 0 (a zero direction stays zero)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def hessian_vector_product(loss_fn: LossFn, params: Any, vector: Any) -> Any:
    """``H(params) @ vector`` as a pytree, forward-over-reverse (``jax.jvp`` of ``jax.grad``).

    Args:
      loss_fn: scalar loss of ``params``.
      params: the point where the Hessian is taken.
      vector: a pytree with the structure of ``params``.

    Returns:
      The product, with the structure of ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


@functools.lru_cache(maxsize=_COMPILED_CACHE)
def _power_iteration(loss_fn: LossFn) -> Callable[..., Any]:
    """The jitted power iteration of ``loss_fn`` (cached, so repeated calls reuse the executable)."""

    def run(params, key, iterations, tol):
        start = optax.tree.random_like(key, params)
        start = optax.tree.scale(_safe_scale(1.0, optax.tree.norm(start)), start)
        zero = jnp.zeros((), jnp.float32)

        def keep_going(state):
            step, _, eigenvalue, previous, _ = state
            return (step < iterations) & (jnp.abs(eigenvalue - previous) > tol * jnp.abs(eigenvalue))

        def power_step(state):
            step, v, eigenvalue, _, _ = state
            w = hessian_vector_product(loss_fn, params, v)
            rayleigh = optax.tree.vdot(v, w).astype(jnp.float32)
            norm = optax.tree.norm(w)
            # A zero product (zero Hessian) keeps v; the next change of lambda is then 0.
            following = jax.tree.map(lambda a, b: jnp.where(norm > 0, a, b), optax.tree.scale(_safe_scale(1.0, norm), w), v)
            return step + 1, following, rayleigh, eigenvalue, v

        state = (jnp.zeros((), jnp.int32), start, zero, jnp.full((), jnp.inf, jnp.float32), start)
        _, _, eigenvalue, _, vector = jax.lax.while_loop(keep_going, power_step, state)
        return eigenvalue, vector

    return jax.jit(run)


def hessian_top_eigenvalue(
    loss_fn: LossFn,
    params: Any,
    *,
    iterations: int = 20,
    key: jax.Array,
    tol: float = 1e-4,
) -> tuple[float, Any]:
    """The Hessian eigenvalue of largest magnitude, by power iteration.

    Starting from a Gaussian vector, repeats ``w = H v``, ``lambda = <v, w>`` (the
    Rayleigh quotient of the unit vector ``v``), ``v = w / ||w||`` until ``iterations``
    products were taken or ``lambda`` changed by at most ``tol * |lambda|``. The whole
    loop is one ``jax.jit``-compiled ``lax.while_loop``, compiled once per ``loss_fn``
    (the last few are cached, so several parameter sets of one model share it; pass the
    same function object to benefit). Power iteration converges to
    the eigenvalue of largest MAGNITUDE, which may be negative away from a minimum; the
    error shrinks like ``(|lambda_2| / |lambda_1|)^(2k)``.

    Args:
      loss_fn: scalar loss of ``params`` (pure and jittable).
      params: pytree of float arrays.
      iterations: the maximal number of Hessian-vector products.
      key: PRNG key of the starting vector.
      tol: relative change of ``lambda`` that stops the iteration early.

    Returns:
      ``(eigenvalue, vector)``: a Python float and the unit-norm eigenvector estimate
      (a pytree like ``params``) whose Rayleigh quotient ``eigenvalue`` is.

    Example::

        lam, v = hessian_top_eigenvalue(lambda x: 0.5 * x @ A @ x, x0, key=jax.random.key(0))
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    eigenvalue, vector = _power_iteration(loss_fn)(params, key, jnp.int32(iterations), jnp.float32(tol))
    return float(eigenvalue), vector


def filter_normalized_direction(params: Any, key: jax.Array) -> Any:
    """A random direction with the scale of ``params``, filter by filter (Li et al., 2018).

    A Gaussian direction is drawn for every leaf; for a leaf with 2 or more dimensions
    each row ``leaf[i]`` (a "filter": an embedding row, a row of a projection matrix)
    is rescaled to the L2 norm of the corresponding parameter row ``params[i]``, so a
    step of 1 changes every row by its own size (a zero parameter row gets a zero
    direction row). Leaves with fewer than 2 dimensions (biases, scalars) get a ZERO
    direction, the paper's convention: a tree of only 1-D leaves has a zero direction.
    Rows are taken along the FIRST axis: for this project's ``(in, out)`` projection
    matrices that is one row per input unit (torch's ``(out, in)`` layout would give
    one per output unit); for embedding tables one row per user or item.

    Args:
      params: pytree of float arrays.
      key: PRNG key.

    Returns:
      The direction, a pytree like ``params``. Jittable.
    """
    direction = optax.tree.random_like(key, params)

    def normalise(d, p):
        if jnp.ndim(p) < 2:
            return jnp.zeros_like(p)
        rows_d = d.reshape(d.shape[0], -1)
        rows_p = jnp.asarray(p).reshape(p.shape[0], -1)
        scale = _safe_scale(jnp.linalg.norm(rows_p, axis=1), jnp.linalg.norm(rows_d, axis=1))
        return (rows_d * scale[:, None]).reshape(p.shape).astype(p.dtype)

    return jax.tree.map(normalise, direction, params)


@functools.lru_cache(maxsize=_COMPILED_CACHE)
def _sam_sharpness(loss_fn: LossFn) -> Callable[..., Any]:
    def run(params, rho):
        loss, grad = jax.value_and_grad(loss_fn)(params)
        radius = rho * optax.tree.norm(params)
        step = optax.tree.scale(_safe_scale(radius, optax.tree.norm(grad)), grad)
        return loss, loss_fn(optax.tree.add(params, step))

    return jax.jit(run)


@functools.lru_cache(maxsize=_COMPILED_CACHE)
def _random_sharpness(loss_fn: LossFn) -> Callable[..., Any]:
    def run(params, keys, rho):
        radius = rho * optax.tree.norm(params)

        def worst_along(k):
            d = filter_normalized_direction(params, k)
            d = optax.tree.scale(_safe_scale(radius, optax.tree.norm(d)), d)
            return jnp.maximum(loss_fn(optax.tree.add(params, d)), loss_fn(optax.tree.sub(params, d)))

        return loss_fn(params), jnp.max(jax.lax.map(worst_along, keys))

    return jax.jit(run)


def sharpness(
    loss_fn: LossFn,
    params: Any,
    rho: float,
    *,
    method: str = "sam",
    num_directions: int = 10,
    key: jax.Array | None = None,
) -> dict[str, float]:
    """The worst loss increase within a radius relative to the parameter norm.

    The radius is ``r = rho * ||params||`` (global L2 norm), so models of different
    scale are comparable. The norm is over every parameter: in a model that fine-tunes
    its raw feature tables (BM3, FREEDOM, LATTICE, MGCN, SMORE, PGL) those tables hold
    nearly all of it, so there the radius is in effect relative to the features' norm.

    * ``"sam"``: one ascent step, ``L(params + r * g / ||g||) - L(params)`` with
      ``g = grad L(params)`` (SAM's first-order worst case; 0 at a zero gradient).
    * ``"random"``: ``max over k, s = +-1 of L(params + s * r * d_k / ||d_k||) - L(params)``
      over ``num_directions`` filter-normalised random directions ``d_k``
      (:func:`filter_normalized_direction`), both signs of each.

    Args:
      loss_fn: scalar loss of ``params`` (pure and jittable).
      params: pytree of float arrays.
      rho: relative radius, >= 0.
      method: ``"sam"`` or ``"random"``.
      num_directions: random directions (``"random"`` only).
      key: PRNG key (``"random"`` only).

    Returns:
      ``{"sharpness": ..., "loss": ..., "perturbed_loss": ...}`` (Python floats;
      ``perturbed_loss`` is the worst perturbed loss).

    Raises:
      ValueError: negative ``rho``, unknown method, missing key for ``"random"``.
    """
    rho = float(rho)
    if not rho >= 0.0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    if method not in SHARPNESS_METHODS:
        raise ValueError(f"unknown sharpness method {method!r}; available: {', '.join(SHARPNESS_METHODS)}")
    if method == "random":
        if key is None:
            raise ValueError("sharpness(method='random') needs a PRNG key")
        if num_directions < 1:
            raise ValueError(f"num_directions must be >= 1, got {num_directions}")

    if method == "sam":
        loss, perturbed = _sam_sharpness(loss_fn)(params, jnp.float32(rho))
    else:
        loss, perturbed = _random_sharpness(loss_fn)(params, jax.random.split(key, num_directions), jnp.float32(rho))
    loss, perturbed = float(loss), float(perturbed)
    return {"sharpness": perturbed - loss, "loss": loss, "perturbed_loss": perturbed}


def _alphas(span: float, points: int) -> np.ndarray:
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span}")
    alphas = np.linspace(-span, span, points)
    if points % 2:
        alphas[points // 2] = 0.0  # exactly the unperturbed parameters
    return alphas.astype(np.float32)


@functools.lru_cache(maxsize=_COMPILED_CACHE)
def _slice_1d(loss_fn: LossFn) -> Callable[..., Any]:
    def run(params, key, alphas):
        d = filter_normalized_direction(params, key)
        return jax.lax.map(lambda a: loss_fn(optax.tree.add_scale(params, a, d)), alphas)

    return jax.jit(run)


@functools.lru_cache(maxsize=_COMPILED_CACHE)
def _slice_2d(loss_fn: LossFn) -> Callable[..., Any]:
    def run(params, key, coefficients):
        k1, k2 = jax.random.split(key)
        d1, d2 = filter_normalized_direction(params, k1), filter_normalized_direction(params, k2)

        def at(ab):
            return loss_fn(optax.tree.add_scale(optax.tree.add_scale(params, ab[0], d1), ab[1], d2))

        return jax.lax.map(at, coefficients)

    return jax.jit(run)


def loss_slice_1d(loss_fn: LossFn, params: Any, *, key: jax.Array, span: float = 1.0, points: int = 21) -> LossSlice:
    """The loss along one filter-normalised random direction: ``L(params + a * d)``.

    Args:
      loss_fn: scalar loss of ``params`` (pure and jittable).
      params: pytree of float arrays.
      key: PRNG key of the direction.
      span: ``a`` runs over ``points`` evenly spaced values in ``[-span, span]`` (an odd
        ``points`` includes exactly 0).
      points: number of values.

    Returns:
      A 1-D :class:`LossSlice`.
    """
    alphas = _alphas(span, points)
    losses = _slice_1d(loss_fn)(params, key, jnp.asarray(alphas))
    return LossSlice(alphas, np.asarray(losses, np.float64))


def loss_slice_2d(loss_fn: LossFn, params: Any, *, key: jax.Array, span: float = 1.0, points: int = 15) -> LossSlice:
    """The loss on the plane of two filter-normalised random directions.

    Args:
      loss_fn: scalar loss of ``params`` (pure and jittable).
      params: pytree of float arrays.
      key: PRNG key of the two directions.
      span: both coefficients run over ``[-span, span]``.
      points: values per axis (``points ** 2`` losses).

    Returns:
      A 2-D :class:`LossSlice` with ``losses[i, j] = L(params + alphas[i] d1 + betas[j] d2)``.
    """
    alphas = _alphas(span, points)
    grid_a, grid_b = np.meshgrid(alphas, alphas, indexing="ij")
    coefficients = jnp.asarray(np.stack([grid_a.ravel(), grid_b.ravel()], axis=1))
    losses = np.asarray(_slice_2d(loss_fn)(params, key, coefficients), np.float64).reshape(points, points)
    return LossSlice(alphas, losses, alphas.copy())


# ---------------------------------------------------------------------------------------
# A deterministic training loss of a recommender.
# ---------------------------------------------------------------------------------------


def check_params_fit(expected: Any, params: Any, what: str) -> None:
    """Raises a ValueError naming the first mismatch unless ``params`` has ``expected``'s structure and shapes."""
    expected_paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    got_paths = jax.tree_util.tree_flatten_with_path(params)[0]
    if jax.tree.structure(expected) != jax.tree.structure(params):
        names = lambda paths: sorted(jax.tree_util.keystr(p) for p, _ in paths)  # noqa: E731
        raise ValueError(
            f"the parameters do not fit {what}: expected the nnx.Param state with leaves {names(expected_paths)}, "
            f"got a {type(params).__name__} with leaves {names(got_paths)}"
        )
    for (path, want), (_, got) in zip(expected_paths, got_paths):
        if tuple(np.shape(want)) != tuple(np.shape(got)):
            raise ValueError(
                f"the parameters do not fit {what}: {jax.tree_util.keystr(path)} has shape {tuple(np.shape(got))}, "
                f"expected {tuple(np.shape(want))}"
            )


def model_train_loss(
    model_cls: type,
    model_config: Any,
    dataset: RecDataset,
    state: Any,
    *,
    seed: int,
    num_batches: int = 4,
    batch_size: int = 2048,
) -> LossFn:
    """A pure, deterministic training loss of a recommender: ``loss_fn(params) -> scalar``.

    The model is built on ``dataset`` (its constants: features, graphs), the trained
    ``state`` is written into it, and it is split into ``(graphdef, nnx.Param state,
    rest)`` like the trainer: ``rest`` keeps the trained non-parameter state (frozen
    random tensors, training caches, the last epoch's samples), so the loss is the one
    the trained model had. The loss is the mean of
    ``nnx.merge(graphdef, p, rest, copy=True).loss(batch, key)`` over a FIXED set of
    training batches: the first ``num_batches`` full batches of one epoch from
    :func:`~mirrorgrad_jax.data.epoch_batches` with ``np.random.default_rng(seed)``
    (fixed shuffling and negatives; the last, smaller batch only when there is no full
    one), each with a fixed key derived from ``seed``. Host-side refreshes
    (``pre_epoch``) are not run. A model with ``first_batch_params`` (LATTICE) is measured
    as a training epoch sees it: the first batch through ``first_batch_loss`` (so the
    first-batch parameters, which ``loss`` reads only detached, are in the loss), the
    others through ``loss`` on what that call cached, all at the given parameters.

    Args:
      model_cls: a :class:`~mirrorgrad_jax.models.Recommender` class.
      model_config: its config.
      dataset: the data.
      state: the trained state (:func:`~mirrorgrad_jax.train.trained.trained_state`; for
        models without saved state, the ``nnx.Param`` state alone). The returned loss
        is a function of the parameters only: pass ``nnx.filter_state(state, nnx.Param)`` to it.
      seed: seeds the batches, negatives and keys.
      num_batches: how many training batches the loss averages.
      batch_size: rows per batch.

    Returns:
      ``loss_fn(params)``, pure and jittable.

    Raises:
      ValueError: a ``state`` that does not fit the model; ``num_batches < 1``.
    """
    from mirrorgrad_jax.errors import CheckpointError
    from mirrorgrad_jax.train.trained import fit_trained_state

    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=seed))
    try:
        nnx.update(model, fit_trained_state(model, state, f"the trained state of {model_cls.__name__} on {dataset.name}"))
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    epoch = epoch_batches(dataset, batch_size, np.random.default_rng(seed), negatives=model_cls.uses_negatives)
    if epoch.full is not None and len(epoch.full):
        batches = jnp.asarray(epoch.full[:num_batches])
    else:
        batches = jnp.asarray(epoch.last)[None]
    keys = jax.random.split(jax.random.key(seed), batches.shape[0])
    first_batch = bool(model_cls.first_batch_params)

    def mean_loss(p, state, batches, keys):
        def one(xs):
            batch, key = xs
            return nnx.merge(graphdef, p, state, copy=True).loss(batch, key)

        return jnp.sum(jax.lax.map(one, (batches, keys)))

    def loss_fn(p):
        if not first_batch:
            return mean_loss(p, rest, batches, keys) / batches.shape[0]
        # As in a training epoch: the first batch's loss reaches the first-batch parameters
        # (LATTICE's graph learner), and what it caches serves the batches after it.
        model = nnx.merge(graphdef, p, rest, copy=True)
        head = model.first_batch_loss(batches[0], keys[0])
        if batches.shape[0] == 1:
            return head
        _, _, after = nnx.split(model, nnx.Param, ...)
        return (head + mean_loss(p, after, batches[1:], keys[1:])) / batches.shape[0]

    return loss_fn
