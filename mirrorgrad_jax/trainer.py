"""The training engine: jitted epochs with Mirror Gradient, exact evaluation, early stopping.

One epoch = host-side negative sampling and shuffling (numpy, seeded), then the full
batches run inside ONE jitted ``lax.scan`` (blocks of ``beta`` batches whose first is a
mirror batch, as the reference's per-epoch schedule), the few remaining batches and
the smaller last batch as single jitted steps. MG never goes through ``lax.cond``.
After each epoch the validation and test splits are ranked in full (the reference
evaluates both every epoch), early stopping follows the reference (strict improvement
of the rounded validation metric, stop after ``patience + 1`` bad epochs), the best
parameters (with the state evaluation needs) are checkpointed atomically and the latest
state is kept for resuming (orbax folders of arrays and JSON, never pickles).

With ``TrainConfig.mesh`` the same program runs over a device mesh (several devices,
several processes): batches split over ``data``, tables placed by the rules of
:mod:`mirrorgrad_jax.sharding`, parameters and optimizer state kept on their shardings
across the jitted steps, evaluation sharded by user blocks and item tiles. Without it
(the default) nothing of that runs and the one-device program is unchanged.

Non-finite losses in either pass of a batch stop the run, keeping the best checkpoint.
The per-epoch learning-rate schedule is written into the optimizer state before each
epoch and the history records the rate read back from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mirrorgrad_jax.checkpoint import flatten_arrays, load_checkpoint, save_checkpoint, unflatten_like
from mirrorgrad_jax.config import check_field_types
from mirrorgrad_jax.data import RecDataset, epoch_batches
from mirrorgrad_jax.errors import CheckpointError, ConfigError, UserInputError
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, EarlyStopping, RankingEvaluator
from mirrorgrad_jax.models.base import Recommender, TrainingCache
from mirrorgrad_jax.partition import skippable_partition
from mirrorgrad_jax.sharding import Placement, auto_budget_bytes, describe_mesh, make_mesh
from mirrorgrad_jax.steps import epoch_layout, make_block_step, make_train_steps
from mirrorgrad_jax.trained import model_arrays, restore_model_arrays
from mirrorgrad_jax.transform import is_mirror_batch, mirror_gradient, torch_clip_grad_norm

__all__ = ["MGConfig", "TrainConfig", "TrainResult", "TrainingError", "build_optimizer", "optimizer_learning_rate", "train"]

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")
SCHEDULES = ("reference", "global", "algorithm1")
APPLY_TO = ("gradient", "update")
#: Label of the parameters a model updates only from its first batch of an epoch.
FIRST_BATCH_GROUP = "first_batch"


class TrainingError(UserInputError):
    """Raised for unusable training setups (bad resume, mismatched checkpoint)."""


@dataclasses.dataclass(frozen=True)
class MGConfig:
    """Mirror Gradient settings (the reference's ``mg.yaml``: alpha1 1.0, alpha2 in {0.1, 0.2, 0.3}, beta 3).

    Attributes:
      enabled: train with MG (the reference's default) or plainly (``--not_mg``).
      alpha1, alpha2, beta: see :func:`mirrorgrad_jax.mirror_gradient` (``alpha1 > alpha2 > 0``).
      apply_to: ``"gradient"`` (reference) or ``"update"``.
      schedule: ``"reference"`` (batch index restarts every epoch), ``"global"`` (never
        restarts) or ``"algorithm1"``.
    """

    enabled: bool = True
    alpha1: float = 1.0
    alpha2: float = 0.2
    beta: int = 3
    apply_to: str = "gradient"
    schedule: str = "reference"

    def __post_init__(self):
        check_field_types(self)
        if self.apply_to not in APPLY_TO:
            raise ConfigError(f"MGConfig.apply_to must be one of {APPLY_TO}, got {self.apply_to!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"MGConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.beta < 1:
            raise ConfigError(f"MGConfig.beta must be >= 1, got {self.beta}")
        if self.enabled and not self.alpha1 > self.alpha2 > 0:
            raise ConfigError(
                f"MG needs alpha1 > alpha2 > 0 (the paper's condition; otherwise the mirror iteration does not descend), "
                f"got alpha1={self.alpha1}, alpha2={self.alpha2}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Trainer settings; defaults are the reference's (``overall.yaml``) unless noted.

    Attributes:
      epochs: cap on training epochs (1000).
      batch_size: training rows per batch (2048); the last smaller batch is kept.
      learning_rate: initial learning rate (1e-3).
      optimizer: one of adam (torch defaults), sgd, adagrad, rmsprop (torch formulas).
      weight_decay: coupled L2 added to the gradient inside the optimizer (0; SLMRec 1e-4).
      lr_schedule: ``(s, T)``: per-epoch learning rate ``lr * s ** (epoch / T)`` ((1.0, 50): constant;
        LATTICE and MGCN use (0.96, 50)).
      clip_grad_norm: clip the last gradient of each batch to this global norm, as the
        reference trainer (on a mirror batch only the mirror step); ``None`` (the
        reference's default) does not clip.
      valid_metric: early-stopping metric; the MG reference uses ``recall@5``
        (upstream MMRec ``recall@20``).
      patience: stop after ``patience + 1`` consecutive non-improving epochs (20).
      min_epochs: never stop early before this many epochs (0: the reference's rule alone).
      eval_batch_size: users per evaluation block (4096).
      topk: ranking cutoffs ((5, 10, 20, 50)).
      seed: seeds the host RNG (shuffles, negatives) and the JAX keys (999).
      dispatch: ``"scan"`` (an epoch's full batches in one jitted scan) or
        ``"per_batch"`` (one jitted call per batch; always used for schedules other
        than ``"reference"``).
      mesh: ``None`` (one device, the default), ``"auto"`` (every device on ``data``) or a
        spec such as ``"data=2,model=2"``: train and evaluate over that device mesh (see
        :mod:`mirrorgrad_jax.sharding`). The same losses and metrics as one device, up to
        float32 summation order.
      shard_tables: with a mesh, row-shard every table (embeddings, features, graph edges)
        over the ``model`` axis.
      device_budget_mb: with a mesh, a table whose replica exceeds this many MiB is
        row-sharded over the whole mesh; ``None``: 1/8 of one device's memory.
    """

    epochs: int = 1000
    batch_size: int = 2048
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: tuple[float, float] = (1.0, 50.0)
    clip_grad_norm: float | None = None
    valid_metric: str = "recall@5"
    patience: int = 20
    min_epochs: int = 0
    eval_batch_size: int = 4096
    topk: tuple[int, ...] = DEFAULT_TOPK
    seed: int = 999
    dispatch: str = "scan"
    mesh: str | None = None
    shard_tables: bool = False
    device_budget_mb: float | None = None

    def __post_init__(self):
        check_field_types(self)
        if self.device_budget_mb is not None and not self.device_budget_mb > 0:
            raise ConfigError(f"device_budget_mb must be > 0 (or null for automatic), got {self.device_budget_mb}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.dispatch not in ("scan", "per_batch"):
            raise ConfigError(f"dispatch must be 'scan' or 'per_batch', got {self.dispatch!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "min_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.lr_schedule[0] > 0 or not self.lr_schedule[1] > 0:
            raise ConfigError(f"lr_schedule must be [factor > 0, epochs > 0], got {list(self.lr_schedule)}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be > 0 (or null for no clipping), got {self.clip_grad_norm}")
        if not self.topk or any(k < 1 for k in self.topk):
            raise ConfigError(f"topk must be positive cutoffs, got {list(self.topk)}")
        metric, _, k = self.valid_metric.lower().partition("@")
        if metric not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(
                f"valid_metric must look like 'recall@20' with a cutoff in topk={tuple(self.topk)}, got {self.valid_metric!r}"
            )
        object.__setattr__(self, "valid_metric", self.valid_metric.lower())

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based): ``lr * s ** (epoch / T)``."""
        factor, period = self.lr_schedule
        return self.learning_rate * factor ** (epoch / period)


@dataclasses.dataclass
class TrainResult:
    """What one training run produced (``layout``: the mesh and the per-device shard shapes of split arrays, with a mesh)."""

    best_epoch: int
    best_valid: dict[str, float]
    test_at_best: dict[str, float]
    epochs_run: int
    stop_reason: str
    history: list[dict[str, Any]]
    train_seconds: float
    eval_seconds: float
    num_params: int
    layout: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inner_optimizer(name: str, learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    base = {
        "adam": lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8),
        "sgd": lambda lr: optax.sgd(lr),
        "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-10),
        "rmsprop": lambda lr: optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    }[name](learning_rate)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def _torch_clip(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """Stateless clipping with torch's formula, for runs without MG (every step is a batch's last)."""

    def update(updates, state, params=None, **_extra):
        return torch_clip_grad_norm(updates, max_norm), state

    return optax.GradientTransformationExtraArgs(lambda _params: optax.EmptyState(), update)


def build_optimizer(
    train_config: TrainConfig, mg: MGConfig, steps_per_epoch: int, *, first_batch_labels: Any = None
) -> optax.GradientTransformation:
    """The optimizer the trainer uses.

    The inner optimizer (with torch's hyper-parameters and coupled weight decay) sits in
    ``optax.inject_hyperparams`` so the per-epoch learning rate can be set in its state
    (:func:`optimizer_learning_rate` reads it back); it is wrapped in
    :func:`~mirrorgrad_jax.mirror_gradient` (transparent mode) when MG is enabled.

    Args:
      train_config: optimizer, learning rate, weight decay, clipping.
      mg: Mirror Gradient settings.
      steps_per_epoch: batches per epoch (the reference schedule restarts there).
      first_batch_labels: for models with ``first_batch_params``: a pytree of labels
        over the parameters, :data:`FIRST_BATCH_GROUP` for those parameters. They then
        get their own optimizer state, which steps called with ``skip=True`` leave alone.
    """
    cfg = train_config

    def factory(learning_rate):
        opt = _inner_optimizer(cfg.optimizer, learning_rate, cfg.weight_decay)
        if first_batch_labels is not None:
            opt = skippable_partition(opt, first_batch_labels, FIRST_BATCH_GROUP)
        return opt

    inner = optax.inject_hyperparams(factory)(learning_rate=cfg.learning_rate)
    if not mg.enabled:
        return inner if cfg.clip_grad_norm is None else optax.chain(_torch_clip(cfg.clip_grad_norm), inner)
    return mirror_gradient(
        inner,
        mg.alpha1,
        mg.alpha2,
        mg.beta,
        mode="transparent",
        apply_to=mg.apply_to,
        schedule=mg.schedule,
        steps_per_epoch=steps_per_epoch,
        clip_grad_norm=cfg.clip_grad_norm,
    )


def _is_injected(node: Any) -> bool:
    # optax.inject_hyperparams returns InjectStatefulHyperparamsState, which is NOT a
    # subclass of InjectHyperparamsState: match both.
    return isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def _set_learning_rate(opt_state: Any, value: float) -> Any:
    """Returns ``opt_state`` with every injected ``learning_rate`` set to ``value``."""
    found = []

    def fix(node):
        if _is_injected(node) and "learning_rate" in node.hyperparams:
            found.append(node)
            hp = dict(node.hyperparams)
            hp["learning_rate"] = jnp.asarray(value, dtype=jnp.asarray(hp["learning_rate"]).dtype)
            return node._replace(hyperparams=hp)
        return node

    out = jax.tree.map(fix, opt_state, is_leaf=_is_injected)
    if not found:
        raise TrainingError("the optimizer state has no injected learning_rate; the learning-rate schedule cannot be applied")
    return out


def optimizer_learning_rate(opt_state: Any) -> float:
    """The learning rate held in the (first) ``inject_hyperparams`` state inside ``opt_state``."""
    nodes = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_injected) if _is_injected(n)]
    if not nodes:
        raise ValueError("no optax.inject_hyperparams state with a learning_rate in this optimizer state")
    return float(nodes[0].hyperparams["learning_rate"])


def _fingerprint(dataset: RecDataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "num_users": int(dataset.num_users),
        "num_items": int(dataset.num_items),
        "train": int(len(dataset.train)),
        "features": {k: list(v.shape) for k, v in dataset.features.items()},
    }


def _first_batch_labels(model_cls: type[Recommender], params: Any) -> Any:
    """Labels over ``params``: ``first_batch`` under the model's ``first_batch_params``, else ``others``."""
    names = set(model_cls.first_batch_params)
    known = {str(path[0].key) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(names - known)
    if missing:
        raise TrainingError(f"{model_cls.__name__}.first_batch_params names {missing}, which hold no parameters")
    return jax.tree_util.tree_map_with_path(lambda path, _: FIRST_BATCH_GROUP if str(path[0].key) in names else "others", params)


class _Engine:
    """Compiled pieces of one run: loss, steps, epoch scans and scoring.

    The model is split into parameters, its training cache and everything else
    (constants). The cache is threaded through every step in order, so a model may read
    what an earlier step of the epoch cached (LATTICE's item graph) and evaluation sees
    what the last training forward wrote (stale evaluation).

    With a :class:`~mirrorgrad_jax.sharding.Placement`, parameters, cache and constants
    are placed on its mesh, every jitted step returns parameters, optimizer state and
    cache on those same shardings (so they stay put across steps and epochs), and
    batches are split over ``data``. Without one, nothing of that runs.
    """

    def __init__(self, model: Recommender, tx, mg: MGConfig, train_config: TrainConfig, placement: Placement | None = None):
        self.graphdef, params, cache, consts = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.mg, self.cfg = mg, train_config
        self.placement = placement
        self._const_sources: list[Any] = []
        self._const_placed: list[Any] = []
        if placement is None:
            self.params, self.cache, self.consts = params, cache, consts
        else:
            # The module keeps host copies (its pre_epoch reads them there); the devices hold
            # only the placed arrays, not also a full copy on the first device.
            params, cache, consts = _to_host(params), _to_host(cache), _to_host(consts)
            nnx.update(model, params, cache, consts)
            self.params = placement.put(params)
            self.cache = placement.put(cache)
            self.consts = self._place_constants(consts)
            self.param_shardings = placement.shardings(self.params)
            self.cache_shardings = placement.shardings(self.cache)
            self.opt_shardings = placement.shardings(jax.eval_shape(tx.init, self.params))
        self.first_batch = bool(type(model).first_batch_params)
        graphdef = self.graphdef

        def make_loss(method: str):
            def loss_fn(p, batch, key, consts, cache):
                model = nnx.merge(graphdef, p, cache, consts, copy=True)
                loss = getattr(model, method)(batch, key)
                return loss, nnx.state(model, TrainingCache)

            return loss_fn

        def scores_fn(state, users):
            p, cache, consts = state
            return nnx.merge(graphdef, p, cache, consts, copy=True).scores(users)

        self.scores_fn = scores_fn
        skip = {"skip": True} if self.first_batch else {}
        common = dict(has_aux=True, mirror=mg.enabled, both_losses=True, thread_aux=True)
        steps = make_train_steps(make_loss("loss"), tx, update_kwargs=skip, **common)
        donate: dict[str, Any] = dict(donate_argnums=(0, 1))
        if placement is not None:
            # Parameters, optimizer state and cache come back on the shardings they went in with.
            donate["out_shardings"] = (self.param_shardings, self.opt_shardings, placement.replicated, self.cache_shardings)
        self.normal = jax.jit(steps.normal, **donate)
        self.mirror = jax.jit(steps.mirror, **donate)
        if self.first_batch:
            # Batch 0 of an epoch: the model's first-batch loss, every parameter updated;
            # the mirror pass (MG) uses the ordinary loss and skips the first-batch group.
            first = make_train_steps(
                make_loss("first_batch_loss"), tx, update_kwargs={"skip": False},
                mirror_pass_loss_fn=make_loss("loss"), mirror_pass_update_kwargs={"skip": True}, **common,
            )  # fmt: skip
            self.first_normal = jax.jit(first.normal, **donate)
            self.first_mirror = jax.jit(first.mirror, **donate)
        block = make_block_step(steps, mg.beta, thread_aux=True) if mg.enabled else None

        def scan_normal(p, s, batches, keys, consts, cache):
            def body(carry, xs):
                p, s, cache = carry
                p, s, loss, cache = steps.normal(p, s, *xs, consts, cache)
                return (p, s, cache), loss

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (batches, keys))
            return p, s, losses, cache

        def scan_blocks(p, s, blocks, keys, consts, cache):
            def body(carry, xs):
                p, s, cache = carry
                p, s, losses, cache = block(p, s, *xs, consts, cache)
                return (p, s, cache), losses

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (blocks, keys))
            return p, s, losses.reshape(-1, 2), cache

        self.scan_normal = jax.jit(scan_normal, **donate)
        self.scan_blocks = jax.jit(scan_blocks, **donate)

    def refresh_constants(self, model: Recommender) -> None:
        """Takes the model's constants again (``pre_epoch`` may have redrawn samples)."""
        _, _, _, consts = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.consts = consts if self.placement is None else self._place_constants(consts)

    def take_cache(self, model: Recommender) -> None:
        """Takes the model's training cache (after a resume wrote it into the model)."""
        _, _, cache, _ = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.cache = cache if self.placement is None else self.placement.put(cache)

    def _place_constants(self, consts: Any) -> Any:
        """Constants on the mesh; those ``pre_epoch`` left as they were keep their placed copy."""
        leaves, treedef = jax.tree.flatten(consts)
        shardings = jax.tree.leaves(self.placement.shardings(consts))
        same = len(leaves) == len(self._const_sources)
        placed = [
            self._const_placed[i] if same and leaf is self._const_sources[i] else self.placement.put(leaf, sharding)
            for i, (leaf, sharding) in enumerate(zip(leaves, shardings))
        ]
        self._const_sources, self._const_placed = leaves, placed
        return jax.tree.unflatten(treedef, placed)

    def init_opt_state(self, tx) -> Any:
        """``tx.init(params)``, created directly on the optimizer state's shardings with a mesh."""
        if self.placement is None:
            return tx.init(self.params)
        return jax.jit(tx.init, out_shardings=self.opt_shardings)(self.params)

    def place_opt_state(self, opt_state: Any) -> Any:
        """The optimizer state on its shardings (after the host changed a leaf, e.g. the learning rate)."""
        return opt_state if self.placement is None else self.placement.put(opt_state, self.opt_shardings)

    def _put_batches(self, batches: np.ndarray) -> jax.Array:
        """A host batch (or stack of batches) on the device(s): rows (the last axis) split over ``data``."""
        return jnp.asarray(batches) if self.placement is None else self.placement.put_batch(batches, axis=-1)

    def run_epoch(self, params, opt_state, full: np.ndarray | None, last: np.ndarray | None, key, global_batch: int, steps_per_epoch: int):
        """Trains one epoch.

        Returns:
          ``(params, opt_state, losses)`` with ``losses`` of shape ``(batches, 2)``:
          per batch, the first-pass loss and the loss of the last pass (the mirror pass
          on mirror batches). The training cache is left in ``self.cache``.
        """
        mg, cfg, consts = self.mg, self.cfg, self.consts
        cache = self.cache
        n_full = 0 if full is None else len(full)
        keys = jax.random.split(key, steps_per_epoch)
        if self.placement is not None:
            keys = self.placement.put(keys, self.placement.replicated)
        losses = []

        def single(p, s, c, b, index):
            mirror = mg.enabled and bool(
                is_mirror_batch(global_batch + index, mg.beta, schedule=mg.schedule, steps_per_epoch=steps_per_epoch)
            )
            if self.first_batch and index == 0:
                step = self.first_mirror if mirror else self.first_normal
            else:
                step = self.mirror if mirror else self.normal
            p, s, loss, c = step(p, s, self._put_batches(b), keys[index], consts, c)
            losses.append(loss[None])
            return p, s, c

        if cfg.dispatch == "per_batch" or (mg.enabled and mg.schedule != "reference"):
            for index in range(n_full):
                params, opt_state, cache = single(params, opt_state, cache, full[index], index)
        elif n_full:
            # Models with a first-batch loss run batch 0 (and the rest of its MG block) alone.
            start = min(n_full, (mg.beta if mg.enabled else 1) if self.first_batch else 0)
            for index in range(start):
                params, opt_state, cache = single(params, opt_state, cache, full[index], index)
            if n_full > start and not mg.enabled:
                params, opt_state, scanned, cache = self.scan_normal(params, opt_state, self._put_batches(full[start:]), keys[start:n_full], consts, cache)
                losses.append(scanned)
            elif n_full > start:
                blocks, _ = epoch_layout(n_full - start, mg.beta)
                if blocks:
                    stop = start + blocks * mg.beta
                    stacked = self._put_batches(full[start:stop].reshape((blocks, mg.beta) + full.shape[1:]))
                    block_keys = keys[start:stop].reshape(blocks, mg.beta)
                    params, opt_state, scanned, cache = self.scan_blocks(params, opt_state, stacked, block_keys, consts, cache)
                    losses.append(scanned)
                for index in range(start + blocks * mg.beta, n_full):
                    params, opt_state, cache = single(params, opt_state, cache, full[index], index)
        if last is not None:
            params, opt_state, cache = single(params, opt_state, cache, last, n_full)
        self.cache = cache
        flat = np.concatenate([np.asarray(x).reshape(-1, 2) for x in losses]) if losses else np.zeros((0, 2))
        return params, opt_state, flat


def _to_host(tree: Any) -> Any:
    """Numpy copies of a tree's arrays (PRNG keys stay as they are).

    Real copies (``np.array``), not views: on a CPU ``np.asarray`` would alias, and so keep
    alive, the first device's buffer.
    """

    def host(leaf):
        if isinstance(leaf, jax.Array) and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return np.array(leaf)
        return leaf

    return jax.tree.map(host, tree)


#: TrainConfig fields that say where the run's arrays live, not what it computes.
LAYOUT_FIELDS = ("mesh", "shard_tables", "device_budget_mb")


def _placement(cfg: TrainConfig) -> Placement | None:
    """The placement rules of a run with a mesh; None for the one-device run."""
    if cfg.mesh is None:
        return None
    mesh = make_mesh(cfg.mesh)
    budget = auto_budget_bytes(mesh) if cfg.device_budget_mb is None else int(cfg.device_budget_mb * 2**20)
    return Placement(mesh, shard_tables=cfg.shard_tables, budget_bytes=budget)


def _first_non_finite(losses: np.ndarray) -> tuple[int, str, float] | None:
    """``(batch, pass name, value)`` of the first non-finite loss, or None."""
    bad = ~np.isfinite(losses)
    if not bad.any():
        return None
    batch = int(np.flatnonzero(bad.any(axis=1))[0])
    column = 0 if bad[batch, 0] else 1
    return batch, ("first pass" if column == 0 else "mirror pass"), float(losses[batch, column])


def train(
    model_cls: type[Recommender],
    model_config: Any,
    dataset: RecDataset,
    train_config: TrainConfig = TrainConfig(),
    mg: MGConfig = MGConfig(),
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Trains ``model_cls`` on ``dataset`` and evaluates every epoch.

    Models with ``trainable = False`` (ItemKNNCBF) are evaluated once instead, without
    an optimizer; Mirror Gradient does not apply to them and the log says so. A config
    class may define ``for_training(mg_enabled, mg_beta)`` to resolve settings that
    depend on MG (MVGAE's KL weight, which the reference takes from MG's ``beta``).

    Args:
      model_cls: a registered :class:`~mirrorgrad_jax.models.base.Recommender` class.
      model_config: its config dataclass.
      dataset: the data.
      train_config: trainer settings.
      mg: Mirror Gradient settings.
      checkpoint_dir: where ``best.ckpt`` (best-validation parameters and the state
        evaluation needs) and ``last.ckpt`` (everything needed to resume) are written,
        atomically, after every epoch (orbax folders; see :mod:`mirrorgrad_jax.checkpoint`).
        ``None`` keeps nothing on disk.
      resume: continue from ``checkpoint_dir/last.ckpt`` when it exists; the run
        then ends exactly as an uninterrupted one would.
      stop_after_epochs: stop (as if interrupted) after this many epochs of THIS call;
        used to test resuming.
      log: progress printer (``None`` for silence).

    Returns:
      A :class:`TrainResult`.

    Raises:
      TrainingError: a checkpoint that cannot be resumed from.
    """
    say = log or (lambda _msg: None)
    cfg = train_config
    if hasattr(model_config, "for_training"):
        model_config = model_config.for_training(mg.enabled, mg.beta)
    host_rng = np.random.default_rng(cfg.seed)
    placement = _placement(cfg)
    model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=cfg.seed))
    ranking: dict[str, Any] = {"user_block": cfg.eval_batch_size}
    if placement is not None:
        ranking = {"user_block": placement.eval_user_block(cfg.eval_batch_size, dataset.num_items), "mesh": placement.mesh}
    valid_eval = RankingEvaluator(dataset.num_items, dataset.train, dataset.valid, topk=cfg.topk, **ranking)
    test_eval = RankingEvaluator(dataset.num_items, dataset.train, dataset.test, topk=cfg.topk, **ranking)
    config = dataclasses.asdict(cfg)
    meta = {
        "model": model_cls.name,
        "model_config": dataclasses.asdict(model_config),
        # The device layout is not part of the run's arithmetic: a checkpoint resumes on any mesh.
        "train_config": {k: v for k, v in config.items() if k not in LAYOUT_FIELDS},
        "mg": dataclasses.asdict(mg),
        "dataset": _fingerprint(dataset),
        "layout": {k: config[k] for k in LAYOUT_FIELDS},
    }
    last_path = best_path = None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        last_path = os.path.join(checkpoint_dir, "last.ckpt")
        best_path = os.path.join(checkpoint_dir, "best.ckpt")
    if not model_cls.trainable:
        return _evaluate_untrained(model_cls, model, mg, meta, valid_eval, test_eval, best_path, say, placement)

    uses_neg = model_cls.uses_negatives
    n_train = len(dataset.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    labels = _first_batch_labels(model_cls, nnx.state(model, nnx.Param)) if model_cls.first_batch_params else None
    tx = build_optimizer(cfg, mg, steps_per_epoch, first_batch_labels=labels)
    engine = _Engine(model, tx, mg, cfg, placement)
    params = engine.params
    opt_state = engine.init_opt_state(tx)
    stopper = EarlyStopping(metric=cfg.valid_metric, patience=cfg.patience)
    history: list[dict[str, Any]] = []
    best_valid: dict[str, float] = {}
    best_test: dict[str, float] = {}
    start_epoch = 0
    train_seconds = eval_seconds = 0.0
    if resume and last_path and os.path.exists(last_path):
        params, opt_state, saved = _resume(last_path, meta, model, params, opt_state, engine)
        engine.refresh_constants(model)
        engine.take_cache(model)
        host_rng.bit_generator.state = saved["host_rng"]
        stopper = EarlyStopping.from_dict(saved["stopper"])
        history, best_valid, best_test = saved["history"], saved["best_valid"], saved["best_test"]
        start_epoch = saved["epoch"] + 1
        train_seconds, eval_seconds = saved["train_seconds"], saved["eval_seconds"]
        say(f"resumed from {last_path} after epoch {saved['epoch']}")
    mg_text = f"on (alpha1={mg.alpha1:g}, alpha2={mg.alpha2:g}, beta={mg.beta}, {mg.apply_to})" if mg.enabled else "off"
    say(f"{model_cls.name} on {dataset.name}: {model.num_trainable_params():,} trainable parameters, {steps_per_epoch} batches/epoch, MG {mg_text}")
    layout = None
    if placement is not None:
        layout = placement.describe({"params": params, "consts": engine.consts})
        split = ", ".join(f"{name} {shape}" for name, shape in layout["shards"].items()) or "none"
        say(f"mesh {describe_mesh(placement.mesh)}; arrays split (per-device shard): {split}; evaluation blocks of {valid_eval.user_block} users")
        for note in placement.notes:
            say(f"note: {note}")
    base_key = jax.random.key(cfg.seed)
    stop_reason = "max_epochs"
    epochs_this_call = 0

    def should_stop(epochs_done: int) -> bool:
        return stopper.should_stop and epochs_done >= cfg.min_epochs

    if should_stop(start_epoch):
        stop_reason = "early_stopping"
    epoch = start_epoch
    while epoch < cfg.epochs and not should_stop(epoch):
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            stop_reason = "interrupted"
            break
        opt_state = engine.place_opt_state(_set_learning_rate(opt_state, cfg.learning_rate_at(epoch)))
        lr = optimizer_learning_rate(opt_state)
        t0 = time.perf_counter()
        # Host-side refresh (graph sampling) may change model constants: take them again.
        model.pre_epoch(host_rng)
        engine.refresh_constants(model)
        batches = epoch_batches(dataset, cfg.batch_size, host_rng, negatives=uses_neg)
        full = None if batches.full is None or len(batches.full) == 0 else batches.full
        params, opt_state, losses = engine.run_epoch(
            params, opt_state, full, batches.last, jax.random.fold_in(base_key, epoch), epoch * steps_per_epoch, steps_per_epoch
        )
        jax.block_until_ready(params)
        nnx.update(model, engine.cache)
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        bad = _first_non_finite(losses)
        if bad is not None:
            batch, which, value = bad
            stop_reason = "nan_loss"
            kept = f"The best checkpoint (epoch {stopper.best_epoch}) is kept." if stopper.best_epoch >= 0 else "No epoch finished cleanly."
            say(f"epoch {epoch}: the loss became non-finite ({value}) in the {which} of batch {batch}; stopping. {kept}")
            break
        state = (params, engine.cache, engine.consts)
        valid = valid_eval.evaluate(engine.scores_fn, state)
        test = test_eval.evaluate(engine.scores_fn, state)
        t2 = time.perf_counter()
        eval_seconds += t2 - t1
        improved = stopper.update(valid[cfg.valid_metric], epoch)
        if improved:
            best_valid, best_test = valid, test
            if best_path:
                save_checkpoint(best_path, model_arrays(params, model), {"meta": meta, "epoch": epoch, "valid": valid, "test": test})
        epoch_loss = float(losses[:, 0].sum())
        history.append({"epoch": epoch, "loss": epoch_loss, "lr": lr, "valid": valid, "test": test, "train_s": t1 - t0, "eval_s": t2 - t1})
        say(
            f"epoch {epoch:3d}  loss {epoch_loss:9.4f}  valid {cfg.valid_metric} {valid[cfg.valid_metric]:.4f}  "
            f"test {cfg.valid_metric} {test[cfg.valid_metric]:.4f}  train {t1 - t0:5.2f}s  eval {t2 - t1:5.2f}s"
            + ("  *" if improved else "")
        )
        if last_path:
            arrays = {**model_arrays(params, model), "opt_state": flatten_arrays(opt_state)}
            save_checkpoint(
                last_path,
                arrays,
                {
                    "meta": meta,
                    "epoch": epoch,
                    "host_rng": host_rng.bit_generator.state,
                    "stopper": stopper.to_dict(),
                    "history": history,
                    "best_valid": best_valid,
                    "best_test": best_test,
                    "train_seconds": train_seconds,
                    "eval_seconds": eval_seconds,
                },
            )
        epoch += 1
        epochs_this_call += 1
        if should_stop(epoch):
            stop_reason = "early_stopping"
    return TrainResult(
        best_epoch=stopper.best_epoch,
        best_valid=best_valid,
        test_at_best=best_test,
        epochs_run=len(history),
        stop_reason=stop_reason,
        history=history,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        num_params=model.num_trainable_params(),
        layout=layout,
    )


def _restore_targets(tree: Any, shardings: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Name -> shape, dtype and sharding of each leaf: where orbax should put it."""
    shapes, placed = flatten_arrays(tree), flatten_arrays(shardings)
    return {name: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=placed[name]) for name, leaf in shapes.items()}


def _resume(path: str, meta: dict[str, Any], model: Recommender, params: Any, opt_state: Any, engine: _Engine) -> tuple[Any, Any, dict[str, Any]]:
    """Loads ``last.ckpt``: checks it belongs to this run, restores the model state, returns params, optimizer state and metadata.

    With a mesh, parameters and optimizer state are read straight onto this run's
    shardings (each device reads its own shards), whatever mesh wrote them.
    """
    targets = None
    if engine.placement is not None:
        targets = {"params": _restore_targets(params, engine.param_shardings), "opt_state": _restore_targets(opt_state, engine.opt_shardings)}
    try:
        ckpt = load_checkpoint(path, targets=targets)
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    saved = ckpt.meta
    if "opt_state" not in ckpt.arrays or "host_rng" not in saved:
        raise TrainingError(f"cannot resume from {path}: it is not a last.ckpt written by the trainer")
    mismatched = [
        k
        for k in meta
        if k != "layout"
        and json.dumps(saved.get("meta", {}).get(k), sort_keys=True, default=str) != json.dumps(meta[k], sort_keys=True, default=str)
    ]
    if mismatched:
        raise TrainingError(f"cannot resume from {path}: its {', '.join(mismatched)} differ from this run's")
    try:
        restore_model_arrays(model, ckpt.arrays, path)
        params = unflatten_like(params, ckpt.arrays["params"], f"{path}: the parameters")
        opt_state = unflatten_like(opt_state, ckpt.arrays["opt_state"], f"{path}: the optimizer state")
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    params = jax.tree.map(jnp.asarray, params)
    opt_state = jax.tree.map(jnp.asarray, opt_state)
    if engine.placement is not None:
        params = engine.placement.put(params, engine.param_shardings)
        opt_state = engine.place_opt_state(opt_state)
    return params, opt_state, saved


def _evaluate_untrained(model_cls, model, mg: MGConfig, meta, valid_eval, test_eval, best_path, say, placement: Placement | None = None) -> TrainResult:
    """The run of a model that needs no training: one evaluation of valid and test."""
    note = "; Mirror Gradient does not apply to it (the run is the same with or without --mg)" if mg.enabled else ""
    say(f"{model_cls.name} needs no training: evaluating it once{note}")
    graphdef, state = nnx.split(model)
    if placement is not None:
        state = placement.put(state)

    def scores_fn(state, users):
        return nnx.merge(graphdef, state, copy=True).scores(users)

    t0 = time.perf_counter()
    valid = valid_eval.evaluate(scores_fn, state)
    test = test_eval.evaluate(scores_fn, state)
    seconds = time.perf_counter() - t0
    if best_path:
        _, params, _ = nnx.split(model, nnx.Param, ...)
        save_checkpoint(best_path, model_arrays(params, model), {"meta": meta, "epoch": 0, "valid": valid, "test": test})
    metric = meta["train_config"]["valid_metric"]
    say(f"valid {metric} {valid[metric]:.4f}  test {metric} {test[metric]:.4f}  eval {seconds:5.2f}s")
    history = [{"epoch": 0, "loss": 0.0, "lr": 0.0, "valid": valid, "test": test, "train_s": 0.0, "eval_s": seconds}]
    return TrainResult(0, valid, test, 1, "no_training", history, 0.0, seconds, model.num_trainable_params())
