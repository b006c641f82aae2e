"""The training engine: jitted epochs with Mirror Gradient, exact evaluation, early stopping.

One epoch = host-side negative sampling and shuffling (numpy, seeded), then the full
batches run inside ONE jitted ``lax.scan`` (blocks of ``beta`` batches whose first is a
mirror batch, as the reference's per-epoch schedule), the few remaining batches and
the smaller last batch as single jitted steps. MG never goes through ``lax.cond``.
After each epoch the validation and test splits are ranked in full (the reference
evaluates both every epoch), early stopping follows the reference (strict improvement
of the rounded validation metric, stop after ``patience + 1`` bad epochs), the best
parameters are checkpointed atomically and the latest state is kept for resuming.
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

from mirrorgrad_jax.checkpoint import load_checkpoint, save_checkpoint
from mirrorgrad_jax.data import RecDataset, epoch_batches
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, EarlyStopping, RankingEvaluator
from mirrorgrad_jax.models.base import Recommender, TrainingCache
from mirrorgrad_jax.steps import epoch_layout, make_block_step, make_train_steps
from mirrorgrad_jax.transform import is_mirror_batch, mirror_gradient

__all__ = ["MGConfig", "TrainConfig", "TrainResult", "TrainingError", "build_optimizer", "train"]

OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop")


class TrainingError(RuntimeError):
    """Raised for unusable training setups (bad resume, mismatched checkpoint)."""


@dataclasses.dataclass(frozen=True)
class MGConfig:
    """Mirror Gradient settings (the reference's ``mg.yaml``: alpha1 1.0, alpha2 in {0.1, 0.2, 0.3}, beta 3).

    Attributes:
      enabled: train with MG (the reference's default) or plainly (``--not_mg``).
      alpha1, alpha2, beta: see :func:`mirrorgrad_jax.mirror_gradient`.
      apply_to: ``"gradient"`` (reference) or ``"update"``.
      schedule: ``"reference"`` (batch index restarts every epoch) or ``"algorithm1"``.
    """

    enabled: bool = True
    alpha1: float = 1.0
    alpha2: float = 0.2
    beta: int = 3
    apply_to: str = "gradient"
    schedule: str = "reference"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Trainer settings; defaults are the reference's (``overall.yaml``) unless noted.

    Attributes:
      epochs: cap on training epochs (1000).
      batch_size: training rows per batch (2048); the last smaller batch is kept.
      learning_rate: initial learning rate (1e-3).
      optimizer: one of adam (torch defaults), sgd, adagrad, rmsprop (torch formulas).
      weight_decay: coupled L2 added to the gradient inside the optimizer (0; SLMRec 1e-4).
      lr_schedule: ``(s, T)``: per-epoch learning rate ``lr * s ** (epoch / T)`` ((1.0, 50): constant).
      valid_metric: early-stopping metric; the MG reference uses ``recall@5``
        (upstream MMRec ``recall@20``).
      patience: stop after ``patience + 1`` consecutive non-improving epochs (20).
      eval_batch_size: users per evaluation block (4096).
      topk: ranking cutoffs ((5, 10, 20, 50)).
      seed: seeds the host RNG (shuffles, negatives) and the JAX keys (999).
      dispatch: ``"scan"`` (an epoch's full batches in one jitted scan) or
        ``"per_batch"`` (one jitted call per batch; needed for ``schedule="algorithm1"``).
    """

    epochs: int = 1000
    batch_size: int = 2048
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: tuple[float, float] = (1.0, 50.0)
    valid_metric: str = "recall@5"
    patience: int = 20
    eval_batch_size: int = 4096
    topk: tuple[int, ...] = DEFAULT_TOPK
    seed: int = 999
    dispatch: str = "scan"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.dispatch not in ("scan", "per_batch"):
            raise ValueError(f"dispatch must be 'scan' or 'per_batch', got {self.dispatch!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        metric, _, k = self.valid_metric.lower().partition("@")
        if metric not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in self.topk:
            raise ValueError(
                f"valid_metric must look like 'recall@20' with a cutoff in topk={tuple(self.topk)}, got {self.valid_metric!r}"
            )
        object.__setattr__(self, "valid_metric", self.valid_metric.lower())
        object.__setattr__(self, "lr_schedule", tuple(float(v) for v in self.lr_schedule))
        object.__setattr__(self, "topk", tuple(int(k) for k in self.topk))


@dataclasses.dataclass
class TrainResult:
    """What one training run produced."""

    best_epoch: int
    best_valid: dict[str, float]
    test_at_best: dict[str, float]
    epochs_run: int
    stop_reason: str
    history: list[dict[str, Any]]
    train_seconds: float
    eval_seconds: float
    num_params: int

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


def build_optimizer(train_config: TrainConfig, mg: MGConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer the trainer uses: inner optimizer with an injectable learning rate, wrapped in MG when enabled."""
    inner = optax.inject_hyperparams(_inner_optimizer, static_args=("name", "weight_decay"))(
        name=train_config.optimizer, learning_rate=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    if not mg.enabled:
        return inner
    return mirror_gradient(
        inner,
        mg.alpha1,
        mg.alpha2,
        mg.beta,
        mode="transparent",
        apply_to=mg.apply_to,
        schedule=mg.schedule,
        steps_per_epoch=steps_per_epoch,
    )


def _set_learning_rate(opt_state: Any, value: float) -> Any:
    """Returns ``opt_state`` with every injected ``learning_rate`` set to ``value``."""

    def fix(node):
        if isinstance(node, optax.InjectHyperparamsState):
            hp = dict(node.hyperparams)
            hp["learning_rate"] = jnp.asarray(value, dtype=jnp.asarray(hp["learning_rate"]).dtype)
            return node._replace(hyperparams=hp)
        return node

    return jax.tree.map(fix, opt_state, is_leaf=lambda n: isinstance(n, optax.InjectHyperparamsState))


def _fingerprint(dataset: RecDataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "num_users": int(dataset.num_users),
        "num_items": int(dataset.num_items),
        "train": int(len(dataset.train)),
        "features": {k: list(v.shape) for k, v in dataset.features.items()},
    }


class _Engine:
    """Compiled pieces of one run: loss, steps, epoch scans and scoring."""

    def __init__(self, model: Recommender, tx, mg: MGConfig, train_config: TrainConfig):
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params, self.rest = params, rest
        self.mg, self.cfg = mg, train_config
        graphdef = self.graphdef

        def loss_fn(p, batch, key, rest):
            model = nnx.merge(graphdef, p, rest, copy=True)
            loss = model.loss(batch, key)
            # Whatever the model cached from this forward (empty for most models).
            return loss, nnx.state(model, TrainingCache)

        def scores_fn(state, users):
            p, rest = state
            return nnx.merge(graphdef, p, rest, copy=True).scores(users)

        self.scores_fn = scores_fn
        steps = make_train_steps(loss_fn, tx, has_aux=True, mirror=mg.enabled)
        donate = dict(donate_argnums=(0, 1))
        self.normal = jax.jit(steps.normal, **donate)
        self.mirror = jax.jit(steps.mirror, **donate)
        block = make_block_step(steps, mg.beta) if mg.enabled else None

        def scan_normal(p, s, batches, keys, rest, cache):
            def body(carry, xs):
                p, s, loss, cache = steps.normal(*carry[:2], *xs, rest)
                return (p, s, cache), loss

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (batches, keys))
            return p, s, losses, cache

        def scan_blocks(p, s, blocks, keys, rest, cache):
            def body(carry, xs):
                p, s, losses, cache = block(*carry[:2], *xs, rest)
                return (p, s, cache), losses

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (blocks, keys))
            return p, s, losses.reshape(-1), cache

        self.scan_normal = jax.jit(scan_normal, **donate)
        self.scan_blocks = jax.jit(scan_blocks, **donate)

    def run_epoch(self, params, opt_state, full: np.ndarray | None, last: np.ndarray | None, key, global_batch: int, steps_per_epoch: int):
        """Trains one epoch; returns (params, opt_state, first-pass losses per batch, training cache)."""
        mg, cfg, rest = self.mg, self.cfg, self.rest
        cache = nnx.filter_state(rest, TrainingCache)
        n_full = 0 if full is None else len(full)
        keys = jax.random.split(key, steps_per_epoch)
        losses = []

        def single(p, s, b, index):
            mirror = mg.enabled and bool(
                is_mirror_batch(global_batch + index, mg.beta, schedule=mg.schedule, steps_per_epoch=steps_per_epoch)
            )
            return (self.mirror if mirror else self.normal)(p, s, jnp.asarray(b), keys[index], rest)

        if cfg.dispatch == "per_batch" or mg.schedule != "reference":
            for index in range(n_full):
                params, opt_state, loss, cache = single(params, opt_state, full[index], index)
                losses.append(loss)
        elif n_full:
            if not mg.enabled:
                params, opt_state, scanned, cache = self.scan_normal(params, opt_state, jnp.asarray(full), keys[:n_full], rest, cache)
                losses.append(scanned)
            else:
                blocks, remainder = epoch_layout(n_full, mg.beta)
                if blocks:
                    stacked = jnp.asarray(full[: blocks * mg.beta].reshape((blocks, mg.beta) + full.shape[1:]))
                    block_keys = keys[: blocks * mg.beta].reshape(blocks, mg.beta)
                    params, opt_state, scanned, cache = self.scan_blocks(params, opt_state, stacked, block_keys, rest, cache)
                    losses.append(scanned)
                for index in range(blocks * mg.beta, n_full):
                    params, opt_state, loss, cache = single(params, opt_state, full[index], index)
                    losses.append(loss)
        if last is not None:
            params, opt_state, loss, cache = single(params, opt_state, last, n_full)
            losses.append(loss)
        flat = np.concatenate([np.atleast_1d(np.asarray(x)) for x in losses]) if losses else np.zeros(0)
        return params, opt_state, flat, cache


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

    Args:
      model_cls: a registered :class:`~mirrorgrad_jax.models.base.Recommender` class.
      model_config: its config dataclass.
      dataset: the data.
      train_config: trainer settings.
      mg: Mirror Gradient settings.
      checkpoint_dir: where ``best.ckpt`` (best-validation parameters) and
        ``last.ckpt`` (everything needed to resume) are written, atomically, after
        every epoch. ``None`` keeps nothing on disk.
      resume: continue from ``checkpoint_dir/last.ckpt`` when it exists; the run
        then ends exactly as an uninterrupted one would.
      stop_after_epochs: stop (as if interrupted) after this many epochs of THIS call;
        used to test resuming.
      log: progress printer (``None`` for silence).

    Returns:
      A :class:`TrainResult`.
    """
    say = log or (lambda _msg: None)
    cfg = train_config
    host_rng = np.random.default_rng(cfg.seed)
    model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=cfg.seed))
    uses_neg = model_cls.uses_negatives
    n_train = len(dataset.train)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    tx = build_optimizer(cfg, mg, steps_per_epoch)
    engine = _Engine(model, tx, mg, cfg)
    params = engine.params
    opt_state = tx.init(params)
    valid_eval = RankingEvaluator(dataset.num_items, dataset.train, dataset.valid, topk=cfg.topk, user_block=cfg.eval_batch_size)
    test_eval = RankingEvaluator(dataset.num_items, dataset.train, dataset.test, topk=cfg.topk, user_block=cfg.eval_batch_size)
    stopper = EarlyStopping(metric=cfg.valid_metric, patience=cfg.patience)
    history: list[dict[str, Any]] = []
    best_valid: dict[str, float] = {}
    best_test: dict[str, float] = {}
    start_epoch = 0
    train_seconds = eval_seconds = 0.0
    meta = {
        "model": model_cls.name,
        "model_config": dataclasses.asdict(model_config),
        "train_config": dataclasses.asdict(cfg),
        "mg": dataclasses.asdict(mg),
        "dataset": _fingerprint(dataset),
    }
    last_path = best_path = None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        last_path = os.path.join(checkpoint_dir, "last.ckpt")
        best_path = os.path.join(checkpoint_dir, "best.ckpt")
        if resume and os.path.exists(last_path):
            saved = load_checkpoint(last_path)
            mismatched = [k for k in meta if json.dumps(saved["meta"][k], sort_keys=True, default=str) != json.dumps(meta[k], sort_keys=True, default=str)]
            if mismatched:
                raise TrainingError(f"cannot resume from {last_path}: its {', '.join(mismatched)} differ from this run's")
            params = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(x) for x in saved["params"]])
            opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), [jnp.asarray(x) for x in saved["opt_state"]])
            host_rng.bit_generator.state = saved["host_rng"]
            stopper = EarlyStopping.from_dict(saved["stopper"])
            history, best_valid, best_test = saved["history"], saved["best_valid"], saved["best_test"]
            start_epoch = saved["epoch"] + 1
            train_seconds, eval_seconds = saved["train_seconds"], saved["eval_seconds"]
            say(f"resumed from {last_path} after epoch {saved['epoch']}")
    say(
        f"{model_cls.name} on {dataset.name}: {model.num_trainable_params():,} trainable parameters, "
        f"{steps_per_epoch} batches/epoch, MG {'on (alpha1=%g, alpha2=%g, beta=%d, %s)' % (mg.alpha1, mg.alpha2, mg.beta, mg.apply_to) if mg.enabled else 'off'}"
    )
    base_key = jax.random.key(cfg.seed)
    stop_reason = "max_epochs"
    epochs_this_call = 0
    if stopper.should_stop:
        stop_reason = "early_stopping"
    epoch = start_epoch
    while epoch < cfg.epochs and not stopper.should_stop:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            stop_reason = "interrupted"
            break
        lr = cfg.learning_rate * cfg.lr_schedule[0] ** (epoch / cfg.lr_schedule[1])
        opt_state = _set_learning_rate(opt_state, lr)
        t0 = time.perf_counter()
        # Host-side refresh (graph sampling) may change model constants: re-split them.
        model.pre_epoch(host_rng)
        _, _, engine.rest = nnx.split(model, nnx.Param, ...)
        batches = epoch_batches(dataset, cfg.batch_size, host_rng, negatives=uses_neg)
        full = None if batches.full is None or len(batches.full) == 0 else batches.full
        params, opt_state, losses, cache = engine.run_epoch(
            params, opt_state, full, batches.last, jax.random.fold_in(base_key, epoch), epoch * steps_per_epoch, steps_per_epoch
        )
        jax.block_until_ready(params)
        if len(jax.tree.leaves(cache)):
            nnx.update(model, cache)
            _, _, engine.rest = nnx.split(model, nnx.Param, ...)
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        if not np.all(np.isfinite(losses)):
            bad = int(np.flatnonzero(~np.isfinite(losses))[0])
            stop_reason = "nan_loss"
            say(
                f"epoch {epoch}: the loss became non-finite ({losses[bad]}) at batch {bad}; stopping. "
                + (f"The best checkpoint (epoch {stopper.best_epoch}) is kept." if stopper.best_epoch >= 0 else "No epoch finished cleanly.")
            )
            break
        state = (params, engine.rest)
        valid = valid_eval.evaluate(engine.scores_fn, state)
        test = test_eval.evaluate(engine.scores_fn, state)
        t2 = time.perf_counter()
        eval_seconds += t2 - t1
        improved = stopper.update(valid[cfg.valid_metric], epoch)
        if improved:
            best_valid, best_test = valid, test
            if best_path:
                save_checkpoint(best_path, {"meta": meta, "epoch": epoch, "params": _host_leaves(params), "valid": valid, "test": test})
        history.append(
            {"epoch": epoch, "loss": float(losses.sum()), "lr": lr, "valid": valid, "test": test, "train_s": t1 - t0, "eval_s": t2 - t1}
        )
        say(
            f"epoch {epoch:3d}  loss {losses.sum():9.4f}  valid {cfg.valid_metric} {valid[cfg.valid_metric]:.4f}  "
            f"test {cfg.valid_metric} {test[cfg.valid_metric]:.4f}  train {t1 - t0:5.2f}s  eval {t2 - t1:5.2f}s"
            + ("  *" if improved else "")
        )
        if last_path:
            save_checkpoint(
                last_path,
                {
                    "meta": meta,
                    "epoch": epoch,
                    "params": _host_leaves(params),
                    "opt_state": _host_leaves(opt_state),
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
        if stopper.should_stop:
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
    )


def _host_leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
