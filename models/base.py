"""The interface every recommender answers, and the model registry.

A model is a Flax NNX module built from a dataset and a typed config. The trainer
sees only this interface and never special-cases a model:

* ``loss(batch, key) -> scalar``: ``batch`` is an int32 ``(3, B)`` array
  ``[users; positives; negatives]`` (``(2, B)`` when ``uses_negatives`` is False);
* ``scores(users) -> (len(users), num_items)`` for full ranking;
* ``pre_epoch(rng)``: optional host-side refresh before each epoch (graph sampling);
  it may replace non-trainable variables with arrays of the SAME shapes, held as
  :class:`EpochSample` (checkpoints keep them: evaluation may read them).

Optional parts of the contract, each with a default that changes nothing:

* ``trainable = False``: the model needs no training (ItemKNNCBF); the trainer runs
  one evaluation, builds no optimizer and refuses Mirror Gradient with a clear message.
* ``first_batch_params`` / ``first_batch_loss(batch, key)``: parameters that get a
  gradient only from the FIRST training forward of each epoch (LATTICE rebuilds its
  item graph there and reuses it detached afterwards). The trainer computes that
  forward with ``first_batch_loss`` and, on every other step, leaves these parameters
  AND their optimizer state untouched, as torch's Adam skips parameters whose
  gradient is ``None``.
* ``ranks_with_training_cache()``: True when ``scores`` reads a
  :class:`TrainingCache` written by ``loss`` ("stale" evaluation); evaluating such a
  model before its cache was filled is an error, not a ranking.

Trainable parameters are ``nnx.Param``; constants (features, graphs) are
:class:`Constant` variables, which the optimizer never sees. A model may READ a
:class:`TrainingCache` that an earlier step of the same epoch wrote: the trainer
carries the cache from step to step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.errors import ConfigError, UserInputError

__all__ = ["CHECKPOINTED", "Constant", "EpochSample", "FrozenRandom", "TrainingCache", "check_ready_to_rank", "dense", "pairwise_scores", "Recommender", "register", "get_model", "available_models", "xavier_uniform", "xavier_normal"]

# torch's xavier initialisers on an (n, d) table: U(+-sqrt(6/(n+d))) and N(0, 2/(n+d)),
# symmetric in n and d. jax's glorot_normal truncates, so the normal one is spelled out.
xavier_uniform = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
xavier_normal = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


class Constant(nnx.Variable):
    """A non-trainable array held by a model (features, graph edges, frozen tensors)."""


class EpochSample(Constant):
    """A constant redrawn by ``pre_epoch`` (sampled graphs, neighbour lists).

    Checkpoints keep these, because evaluation may read them (DualGNN's and DRAGON's
    user-graph sample of the epoch).
    """


class FrozenRandom(Constant):
    """A random tensor drawn at construction and never trained (MMGCN's id/preference tables).

    Unlike feature-derived constants it cannot be rebuilt from the dataset, so
    checkpoints keep it.
    """


class TrainingCache(nnx.Variable):
    """An output of the training forward pass kept for evaluation ("stale" evaluation).

    Several reference models rank items with the representation cached by the LAST
    training forward of the epoch instead of recomputing it. A model reproduces that by
    assigning to a ``TrainingCache`` variable inside ``loss``; the trainer carries the
    value out of its jitted epoch and writes it back before evaluating.
    """


class Recommender(nnx.Module):
    """Base class of every model; see the module docstring for the contract."""

    name: ClassVar[str] = "recommender"
    config_class: ClassVar[type] = object
    uses_negatives: ClassVar[bool] = True
    multimodal: ClassVar[bool] = False
    #: False: no training at all (one evaluation, no optimizer, no MG).
    trainable: ClassVar[bool] = True
    #: Top-level attribute names of the parameters that get gradient only from
    #: ``first_batch_loss`` (see the module docstring); empty for most models.
    first_batch_params: ClassVar[tuple[str, ...]] = ()

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def first_batch_loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """The loss of the first training batch of an epoch; ``loss`` unless the model says otherwise."""
        return self.loss(batch, key)

    def ranks_with_training_cache(self) -> bool:
        """Whether ``scores`` reads a :class:`TrainingCache` filled by training (stale evaluation)."""
        return False

    def scores(self, users: jax.Array) -> jax.Array:
        raise NotImplementedError

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Host-side refresh before each epoch; nothing by default."""

    def num_trainable_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(self, nnx.Param))))


#: What a trained model is besides its dataset: everything a checkpoint keeps. Plain
#: :class:`Constant` values are functions of the dataset and config and are rebuilt.
CHECKPOINTED = (nnx.Param, TrainingCache, EpochSample, FrozenRandom)



def image_and_text_roles(dataset: Any, image: str, text: str, model: str) -> tuple[str, str]:
    """The dataset modalities a model that needs BOTH roles uses as (image, text).

    When the named image modality is missing but the text one is present and exactly one
    other modality exists, that one plays the image role, with a warning (MovieLens-100K has
    ``meta`` and ``text``, no image). Otherwise the names are used as given.

    Raises:
      ConfigError: when either role has no table in the dataset (a user input mistake:
        the command line prints it as one line).
    """
    import warnings

    names = set(dataset.features)
    if image not in names:
        others = sorted(names - {text})
        if text in names and len(others) == 1:
            warnings.warn(f"{model}: dataset {dataset.name!r} has no {image!r} modality; using {others[0]!r} in the image role", stacklevel=3)
            image = others[0]
    missing = [f"{role}_modality={name!r}" for role, name in (("image", image), ("text", text)) if name not in names]
    if missing:
        raise ConfigError(
            f"{model} needs both an image and a text feature table, but dataset {dataset.name!r} has no "
            f"{' / '.join(missing)}: its modalities are {sorted(names) or 'none'}; set image_modality / text_modality"
        )
    return image, text


def edges_to_sample(train: Any, dropout: float, model: str) -> tuple[np.ndarray, int]:
    """The distinct train pairs a per-epoch edge sampler draws from, and how many it keeps.

    Args:
      train: ``(E, 2)`` (user, item) train rows.
      dropout: the share of distinct edges dropped each epoch.
      model: model name for the message.

    Returns:
      ``(pairs (E_distinct, 2) int64, kept)`` with ``kept = kept_edge_count(E_distinct, dropout)``.

    Raises:
      ConfigError: when the dropout keeps no edge at all.
    """
    from mirrorgrad_jax.graph import kept_edge_count

    pairs = np.unique(np.asarray(train, np.int64), axis=0)
    kept = kept_edge_count(len(pairs), dropout)
    if kept == 0:
        raise ConfigError(f"{model} dropout={dropout} keeps 0 of the {len(pairs)} distinct train edges; use a smaller dropout")
    return pairs, kept

def check_ready_to_rank(model: Recommender) -> None:
    """Refuses to rank with a stale-evaluation model whose training cache was never filled.

    Such a model would score every item 0 and ``top_k`` would return the lowest item
    ids: numbers that look like metrics and mean nothing.

    Raises:
      ValueError: when ``model.ranks_with_training_cache()`` and every cached array is all zeros.
    """
    if not model.ranks_with_training_cache():
        return
    leaves = jax.tree.leaves(nnx.state(model, TrainingCache))
    if leaves and not any(bool(jnp.any(leaf != 0)) for leaf in leaves):
        raise ValueError(
            f"{type(model).__name__} ranks with the representation cached by its last training forward "
            "(stale_eval=True), but that cache was never filled: train it, load it from a checkpoint "
            "written by the trainer, or build it with stale_eval=False to recompute the representation"
        )


_REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str) -> type[Recommender]:
    """The registered model class called ``name`` (case-insensitive).

    Raises:
      UserInputError: an unknown name (the message lists the available ones).
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UserInputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[key]


def build_config(cls: type[Recommender], values: dict[str, Any] | None) -> Any:
    """Builds ``cls.config_class`` from a mapping, naming any unknown key and the allowed ones.

    Raises:
      ConfigError: an unknown key, a value of the wrong type or out of range.
    """
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.name} option(s) {unknown}; allowed: {sorted(fields)}")
    try:
        return cls.config_class(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.name} config: {err}") from None


def rownorm(x: jax.Array) -> jax.Array:
    """torch's ``F.normalize``: each row over ``max(||row||, 1e-12)``, with a finite gradient at 0."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


# Below this input width the weight gradient keeps autodiff's own product (see :func:`dense`).
DENSE_MIN_WIDTH = 128


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for a wide input ``x`` (n, F), with a faster weight gradient on the CPU.

    Autodiff writes the weight gradient as ``x^T g``, a product contracting the long first
    axis of both operands. XLA's CPU backend runs that layout several times slower than
    the same FLOPs as ``g^T x``: on the 2-core benchmark machine (2026-11-29,
    ``benchmarks/results/dense_backward.md``) a 7,050 x 4,096 feature table against a
    64-wide gradient took 65 ms as ``x^T g`` and 26 ms as ``(g^T x)^T``, bit for bit the
    same result; 4,096 x 4,096 rows (a batch's gathered features) 36 ms against 14 ms.
    The backward pass here computes ``g^T x`` and transposes the small ``(d, F)`` result,
    behind an optimization barrier so XLA cannot fold the transpose back into the product.
    The input gradient ``g @ w^T`` is autodiff's. Forward values are exactly ``x @ w``.

    Narrow inputs (``F < DENSE_MIN_WIDTH``) or a 1-wide output take the plain product:
    at 64 wide the two forms took the same time, and a matrix-vector product sums in
    another order (not bit-equal).
    """
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] < DENSE_MIN_WIDTH or w.shape[1] < 2:
        return x @ w
    return _dense_wide(x, w)


@jax.custom_vjp
def _dense_wide(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _dense_wide_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return x @ w, (x, w)


def _first_axis_product(big: jax.Array, narrow: jax.Array) -> jax.Array:
    """``big^T @ narrow`` (both contracted over their first axis) as ``(narrow^T @ big)^T``.

    Bit for bit autodiff's product, in the operand order XLA's CPU backend runs fast; the
    barrier keeps XLA from folding the transpose of the small result back into the product.
    """
    return jax.lax.optimization_barrier(narrow.T @ big).T


def _dense_wide_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    # Cotangents in the inputs' own dtypes (a mixed-precision product promotes in between).
    return (g @ w.T).astype(x.dtype), _first_axis_product(x, g).astype(w.dtype)


_dense_wide.defvjp(_dense_wide_fwd, _dense_wide_bwd)


def pairwise_scores(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b^T`` for ``a`` (n, d) and ``b`` (m, d), e.g. in-batch logits, with a faster backward pass on the CPU.

    The gradient with respect to ``b`` is ``g^T a`` with ``g`` the (n, m) upstream gradient:
    the transposed-operand product :func:`dense` avoids. Computed as ``(a^T g)^T``, bit-equal;
    both gradients of a 2,048 x 2,048 in-batch logit matrix took 4.9 ms instead of 10.6 ms
    (32-wide rows) and 6.5 ms instead of 11.9 ms (64-wide) on the 2-core benchmark machine
    (``benchmarks/results/dense_backward.md``).
    The gradient with respect to ``a`` (``g @ b``) and the forward values are autodiff's.
    Fewer than ``DENSE_MIN_WIDTH`` rows in ``b`` take the plain product.
    """
    if a.ndim != 2 or b.ndim != 2 or b.shape[0] < DENSE_MIN_WIDTH or a.shape[1] < 2:
        return a @ b.T
    return _pairwise_wide(a, b)


@jax.custom_vjp
def _pairwise_wide(a: jax.Array, b: jax.Array) -> jax.Array:
    return a @ b.T


def _pairwise_wide_fwd(a: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return a @ b.T, (a, b)


def _pairwise_wide_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b = residuals
    return (g @ b).astype(a.dtype), _first_axis_product(g, a).astype(b.dtype)


_pairwise_wide.defvjp(_pairwise_wide_fwd, _pairwise_wide_bwd)


def torch_linear_default(key: jax.Array, fan_in: int, fan_out: int) -> tuple[jax.Array, jax.Array]:
    """torch's default ``nn.Linear`` init as ``(weight (fan_in, fan_out), bias (fan_out,))``.

    Both are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform with ``a = sqrt(5)``
    for the weight). The weight is stored transposed w.r.t. torch, so ``y = x @ w + b``.
    """
    bound = 1.0 / np.sqrt(fan_in)
    # One draw for weight and bias (same distribution): one random kernel to compile.
    both = jax.random.uniform(key, (fan_in + 1, fan_out), jnp.float32, -bound, bound)
    return both[:fan_in], both[fan_in]


def branch_order(names) -> list[str]:
    """The reference's per-modality branch order: image (v), text (t), then the rest alphabetically."""
    first = [m for m in ("image", "text") if m in names]
    return first + sorted(set(names) - set(first))


def bpr_log_likelihood(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Mean of ``log sigmoid(pos - neg)`` (numerically safe)."""
    return jnp.mean(jax.nn.log_sigmoid(pos - neg))


def frobenius(x: jax.Array) -> jax.Array:
    """Non-squared Frobenius norm with a finite gradient at zero (MMRec's EmbLoss term)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x), 1e-24))
