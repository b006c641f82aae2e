"""The training loop: jitted epochs with Mirror Gradient, exact evaluation, early stopping, resumable checkpoints.

One epoch = host-side negative sampling and shuffling (numpy, seeded), then the batches
run through the :class:`~mirrorgrad_jax.train.engine.EpochEngine` (whole MG blocks in one
jitted ``lax.scan``, the rest as single jitted steps; MG never goes through ``lax.cond``).
After each epoch the validation and test splits are ranked in full (the reference
evaluates both every epoch), early stopping follows the reference (strict improvement
of the rounded validation metric, stop after ``patience + 1`` bad epochs), the best
parameters (with the state evaluation needs) are checkpointed atomically and the latest
state is kept for resuming (orbax folders of arrays and JSON, never pickles).

With ``TrainConfig.mesh`` the same program runs over a device mesh (several devices,
several processes): batches split over ``data``, tables placed by the rules of
:mod:`mirrorgrad_jax.devices`, parameters and optimizer state kept on their shardings
across the jitted steps, evaluation sharded by user blocks and item tiles. Without it
(the default) nothing of that runs and the one-device program is unchanged.

Non-finite losses in either pass of a batch stop the run, keeping the best checkpoint.
The per-epoch learning-rate schedule is written into the optimizer state before each
epoch and the history records the rate read back from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import RecDataset, epoch_batches
from mirrorgrad_jax.devices import Placement, auto_budget_bytes, describe_mesh, make_mesh
from mirrorgrad_jax.errors import CheckpointError, TrainingError
from mirrorgrad_jax.evaluation import EarlyStopping, RankingEvaluator, SplitEvaluators
from mirrorgrad_jax.models import Recommender, TrainingSetup
from mirrorgrad_jax.train.checkpoint import (
    checkpoint_exists,
    flatten_arrays,
    open_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    unflatten_like,
)
from mirrorgrad_jax.train.config import LAYOUT_FIELDS, MethodConfig, MGConfig, TrainConfig, fit_topk, training_method
from mirrorgrad_jax.train.engine import EpochEngine
from mirrorgrad_jax.train.events import TensorBoardRun
from mirrorgrad_jax.train.optimizer import build_optimizer, first_batch_labels, optimizer_learning_rate, set_learning_rate
from mirrorgrad_jax.train.progress import above_bars, progress_bar
from mirrorgrad_jax.train.trained import model_arrays, restore_model_arrays

__all__ = ["TrainResult", "resolved_model_config", "train"]


@dataclasses.dataclass
class TrainResult:
    """What one training run produced (``layout``: the mesh and the per-device shard shapes of split arrays, with a mesh).

    ``stop_reason``: ``"max_epochs"``, ``"early_stopping"``, ``"interrupted"`` (Ctrl-C) or
    ``"nan_loss"``: a batch's loss was NaN or infinite, and the epoch it ended is not
    evaluated. The reference stops on NaN only; an infinite loss is stopped on too, since
    the step after it is NaN in practice (so the best epoch is the same).
    """

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


def resolved_model_config(model_cls: type[Recommender], model_config: Any, mg: MGConfig) -> Any:
    """The model config as a run with ``mg`` trains it: the model's
    :meth:`~mirrorgrad_jax.models.Recommender.config_for_training` hook applied (MVGAE's KL
    weight follows MG's ``beta``). The trainer, the grid and the comparison tools all
    resolve configs here, so a run's recorded config is the one it trained with.
    """
    return model_cls.config_for_training(model_config, TrainingSetup(mg_enabled=mg.enabled, mg_beta=mg.beta))


def _fingerprint(dataset: RecDataset) -> dict[str, Any]:
    """The checkpoint's record of the training data: its name and :meth:`RecDataset.fingerprint`."""
    return {"name": dataset.name, **dataset.fingerprint()}


#: Run-metadata keys a resumed run need not share with its checkpoint: where the arrays
#: live, and where the data was read from (a moved folder holds the same data; the
#: fingerprint in "dataset" is compared).
_RESUME_IGNORES = ("layout", "dataset_source")


def _live_settings(key: str, values: Any) -> Any:
    """The settings of a run's metadata that decide its trajectory (others unchanged).

    A SAM run does not read the gradient-norm penalty's ``alpha``, nor a run with MG off
    MG's ``alpha2``: a different value of such a knob is the same run, and resumes. The
    epoch cap (``train_config.epochs``) only says where the run ends (no schedule reads
    it), so a run resumes with a larger cap to go on training (a cap below the epochs
    already done is refused by :func:`_resume`).
    """
    if key == "train_config" and isinstance(values, dict):
        return {k: v for k, v in values.items() if k != "epochs"}
    if key not in ("mg", "method") or not isinstance(values, dict):
        return values
    try:
        inert = set((MGConfig if key == "mg" else MethodConfig)(**values).inert_fields())
    except (TypeError, ValueError):  # settings this version cannot read: compared as they are
        return values
    return {k: v for k, v in values.items() if k not in inert}


def _resume_differences(key: str, saved: Any, current: Any) -> list[str]:
    """What differs between a checkpoint's ``key`` settings and this run's, one ``"key.field: A there, B here"`` each.

    Empty when the run may resume (:func:`_live_settings`).
    """
    if key == "dataset" and isinstance(saved, dict) and isinstance(current, dict) and "splits_sha256" not in saved:
        current = {k: v for k, v in current.items() if k in saved}  # a checkpoint from before the split hash
    saved, current = _live_settings(key, saved), _live_settings(key, current)

    def both(there: Any, here: Any) -> str:
        """``A there, B here``, each cut to 40 characters where they differ (their tails when the heads agree)."""
        a, b = (json.dumps(v, sort_keys=True, default=str) for v in (there, here))
        if max(len(a), len(b)) > 40:
            same_head = a[:37] == b[:37]
            a, b = ((("..." + t[-37:]) if same_head else (t[:37] + "...")) if len(t) > 40 else t for t in (a, b))
        return f"{a} there, {b} here"

    def differs(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)

    if isinstance(saved, dict) and isinstance(current, dict):
        fields = sorted(set(saved) | set(current))
        selector = {"mg": "enabled", "method": "name"}.get(key)
        if selector is not None and saved.get(selector) != current.get(selector):
            fields = [selector]  # another method altogether: its knobs are beside the point
        return [f"{key}.{field}: {both(saved.get(field), current.get(field))}" for field in fields if differs(saved.get(field), current.get(field))]
    return [f"{key}: {both(saved, current)}"] if differs(saved, current) else []


def _placement(cfg: TrainConfig) -> Placement | None:
    """The placement rules of a run with a mesh; None for the one-device run."""
    if cfg.mesh is None:
        return None
    mesh = make_mesh(cfg.mesh)
    budget = auto_budget_bytes(mesh) if cfg.device_budget_mb is None else int(cfg.device_budget_mb * 2**20)
    return Placement(mesh, shard_tables=cfg.shard_tables, budget_bytes=budget)


def _evaluators(dataset: RecDataset, cfg: TrainConfig, placement: Placement | None) -> SplitEvaluators:
    """The valid and test evaluators of a run, ranked as one program (sharded over the mesh when there is one)."""
    ranking: dict[str, Any] = {"user_block": cfg.eval_batch_size}
    if placement is not None:
        ranking = {"user_block": placement.eval_user_block(cfg.eval_batch_size, dataset.num_items), "mesh": placement.mesh}
    return SplitEvaluators(
        RankingEvaluator(dataset.num_items, dataset.train, dataset.valid, topk=cfg.topk, **ranking),
        RankingEvaluator(dataset.num_items, dataset.train, dataset.test, topk=cfg.topk, **ranking),
    )


def _first_non_finite(losses: np.ndarray, second: str = "mirror pass") -> tuple[int, str, float] | None:
    """``(batch, pass name, value)`` of the first non-finite loss, or None (``second`` names the second pass)."""
    bad = ~np.isfinite(losses)
    if not bad.any():
        return None
    batch = int(np.flatnonzero(bad.any(axis=1))[0])
    column = 0 if bad[batch, 0] else 1
    return batch, ("first pass" if column == 0 else second), float(losses[batch, column])


@dataclasses.dataclass
class _Progress:
    """What a run has done so far: everything ``last.ckpt`` keeps besides the arrays."""

    stopper: EarlyStopping
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_valid: dict[str, float] = dataclasses.field(default_factory=dict)
    best_test: dict[str, float] = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    def checkpoint_meta(self, epoch: int, host_rng: np.random.Generator) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "host_rng": host_rng.bit_generator.state,
            "stopper": self.stopper.to_dict(),
            "history": self.history,
            "best_valid": self.best_valid,
            "best_test": self.best_test,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }

    @classmethod
    def from_checkpoint_meta(cls, saved: dict[str, Any]) -> _Progress:
        return cls(
            stopper=EarlyStopping.from_dict(saved["stopper"]),
            history=saved["history"],
            best_valid=saved["best_valid"],
            best_test=saved["best_test"],
            train_seconds=saved["train_seconds"],
            eval_seconds=saved["eval_seconds"],
        )


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
    method: MethodConfig = MethodConfig(),
    events: TensorBoardRun | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Trains ``model_cls`` on ``dataset`` and evaluates every epoch.

    Models with ``trainable = False`` (ItemKNNCBF) are evaluated once instead, without
    an optimizer; Mirror Gradient does not apply to them and the log says so. The model
    config is resolved by :func:`resolved_model_config` first.

    Args:
      model_cls: a registered :class:`~mirrorgrad_jax.models.Recommender` class.
      model_config: its config dataclass.
      dataset: the data.
      train_config: trainer settings.
      mg: Mirror Gradient settings.
      checkpoint_dir: where ``best.ckpt`` (best-validation parameters and the state
        evaluation needs) and ``last.ckpt`` (everything needed to resume) are written,
        atomically, after every epoch (orbax folders; see :mod:`mirrorgrad_jax.train.checkpoint`).
        ``None`` keeps nothing on disk.
      resume: continue from ``checkpoint_dir/last.ckpt`` when it exists; the run
        then ends exactly as an uninterrupted one would. The checkpoint's settings must be
        this run's, except ``train_config.epochs`` (a larger cap trains on; one below the
        epochs already done is refused) and knobs the method does not read; a difference
        raises :class:`TrainingError` naming each one.
      stop_after_epochs: stop (as if interrupted) after this many epochs of THIS call;
        used to test resuming.
      log: progress printer (``None`` for silence).
      method: SAM, ASAM or the gradient-norm penalty instead of MG (then ``mg`` must be
        disabled); the default trains with MG or plainly, as ``mg`` says.
      events: a :class:`~mirrorgrad_jax.train.events.TensorBoardRun` that gets the run's
        settings, every epoch's scalars and the result; the caller closes it. Writing it
        changes no number of the run.
      show_progress: show a progress bar over the epochs (tqdm, on stderr); ``log`` lines are
        printed above it.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ConfigError: MG and another two-pass method together, or a ``valid_metric`` whose
        cut-off is larger than the catalogue (smaller catalogues drop the cut-offs they
        cannot rank, and the log says so: :func:`~mirrorgrad_jax.train.config.fit_topk`).
      TrainingError: a checkpoint that cannot be resumed from.
    """
    say = above_bars(log) if show_progress else (log or (lambda _msg: None))
    # A catalogue smaller than a cut-off is ranked at the cut-offs that fit (fit_topk says why).
    cfg, note = fit_topk(train_config, dataset.num_items)
    if note:
        say(note)
    method_name = training_method(mg, method)
    model_config = resolved_model_config(model_cls, model_config, mg)
    host_rng = np.random.default_rng(cfg.seed)
    placement = _placement(cfg)
    model = model_cls(dataset, model_config, rngs=nnx.Rngs(params=cfg.seed))
    splits = _evaluators(dataset, cfg, placement)
    config = dataclasses.asdict(cfg)
    meta = {
        "model": model_cls.name,
        "model_config": dataclasses.asdict(model_config),
        # The device layout is not part of the run's arithmetic: a checkpoint resumes on any mesh.
        "train_config": {k: v for k, v in config.items() if k not in LAYOUT_FIELDS},
        "mg": dataclasses.asdict(mg),
        # Only runs of another two-pass method carry the key: earlier checkpoints stay resumable.
        **({"method": dataclasses.asdict(method)} if method.name != "none" else {}),
        "dataset": _fingerprint(dataset),
        # Where `mirrorgrad evaluate` finds the data again: a folder's absolute path or a built-in name.
        "dataset_source": dataset.source,
        "layout": {k: config[k] for k in LAYOUT_FIELDS},
    }
    last_path = best_path = None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        last_path = os.path.join(checkpoint_dir, "last.ckpt")
        best_path = os.path.join(checkpoint_dir, "best.ckpt")
        if not resume and any([remove_checkpoint(last_path), remove_checkpoint(best_path)]):
            # A fresh run: an earlier run's checkpoints would otherwise stay until this one
            # saves, and for good when it saves none (a loss that is not finite at once).
            say(f"removed the checkpoints of an earlier run in {checkpoint_dir} (--resume continues them instead)")
    if events is not None:
        events.write_settings(meta)
    if not model_cls.trainable:
        return _evaluate_untrained(model_cls, model, mg, meta, splits, best_path, say, placement, events)

    steps_per_epoch = cfg.steps_per_epoch(len(dataset.train))
    # With PyTorch >= 2.0's semantics a first-batch model's learner is skipped on the other
    # batches (its own optimizer state, left alone); with 1.13's it just gets zero gradients.
    skippable = bool(model_cls.first_batch_params) and cfg.zero_grad == "none"
    labels = first_batch_labels(model_cls, nnx.state(model, nnx.Param)) if skippable else None
    tx = build_optimizer(cfg, mg, steps_per_epoch, first_batch_labels=labels, method=method)
    engine = EpochEngine(model, tx, mg, cfg, placement, perturbed=method_name in ("sam", "asam", "gnp"), skippable=skippable)
    params = engine.params
    opt_state = engine.init_opt_state(tx)
    progress = _Progress(EarlyStopping(metric=cfg.valid_metric, patience=cfg.patience))
    start_epoch = 0
    if resume and last_path and checkpoint_exists(last_path):
        params, opt_state, saved = _resume(last_path, meta, model, params, opt_state, engine)
        engine.refresh_constants(model)
        engine.take_cache(model)
        try:  # a last.ckpt written elsewhere: its bookkeeping is checked, not trusted
            host_rng.bit_generator.state = saved["host_rng"]
            progress = _Progress.from_checkpoint_meta(saved)
            start_epoch = int(saved["epoch"]) + 1
        except (KeyError, TypeError, ValueError) as err:
            raise TrainingError(f"cannot resume from {last_path}: its progress record is malformed ({type(err).__name__}: {err})") from None
        say(f"resumed from {last_path} after epoch {saved['epoch']}")
    knobs = {"mg": f"alpha1={mg.alpha1:g}, alpha2={mg.alpha2:g}, beta={mg.beta}, {mg.apply_to}", "sam": f"rho={method.rho:g}",
             "asam": f"rho={method.rho:g}, eta={method.eta:g}", "gnp": f"alpha={method.alpha:g}, radius={method.radius:g}"}  # fmt: skip
    method_text = {"plain": "MG off", "mg": "MG on"}.get(method_name, method_name.upper())
    method_text += f" ({knobs[method_name]})" if method_name in knobs else ""
    say(f"{model_cls.name} on {dataset.name}: {model.num_trainable_params():,} trainable parameters, {steps_per_epoch} batches/epoch, {method_text}")
    layout = None
    if placement is not None:
        layout = placement.describe({"params": params, "consts": engine.consts})
        split = ", ".join(f"{name} {shape}" for name, shape in layout["shards"].items()) or "none"
        say(f"mesh {describe_mesh(placement.mesh)}; arrays split (per-device shard): {split}; evaluation blocks of {splits.evaluators[0].user_block} users")
        for note in placement.notes:
            say(f"note: {note}")
    base_key = jax.random.key(cfg.seed)
    stopper = progress.stopper
    stop_reason = "max_epochs"

    def should_stop(epochs_done: int) -> bool:
        return stopper.should_stop and epochs_done >= cfg.min_epochs

    if should_stop(start_epoch):
        stop_reason = "early_stopping"
    epoch = start_epoch
    bar = progress_bar(cfg.epochs, initial=start_epoch, unit="epoch", enabled=show_progress, desc=f"{model_cls.name} {method_name}")
    while epoch < cfg.epochs and not should_stop(epoch):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            stop_reason = "interrupted"
            break
        opt_state = engine.place_opt_state(set_learning_rate(opt_state, cfg.learning_rate_at(epoch)))
        lr = optimizer_learning_rate(opt_state)
        t0 = time.perf_counter()
        # Host-side refresh (graph sampling) may change model constants: take them again.
        model.pre_epoch(host_rng)
        engine.refresh_constants(model)
        batches = epoch_batches(dataset, cfg.batch_size, host_rng, negatives=model_cls.uses_negatives)
        full = None if batches.full is None or len(batches.full) == 0 else batches.full
        params, opt_state, losses = engine.run_epoch(
            params, opt_state, full, batches.last, jax.random.fold_in(base_key, epoch), epoch * steps_per_epoch, steps_per_epoch
        )
        jax.block_until_ready(params)
        nnx.update(model, engine.cache)
        t1 = time.perf_counter()
        progress.train_seconds += t1 - t0
        bad = _first_non_finite(losses, "mirror pass" if method_name == "mg" else "perturbed pass")
        if bad is not None:
            batch, which, value = bad
            stop_reason = "nan_loss"
            kept = f"The best checkpoint (epoch {stopper.best_epoch}) is kept." if stopper.best_epoch >= 0 else "No epoch finished cleanly."
            say(f"epoch {epoch}: the loss became non-finite ({value}) in the {which} of batch {batch}; stopping. {kept}")
            break
        state = (params, engine.cache, engine.consts)
        valid, test = splits.evaluate(engine.scores_fn, state)
        t2 = time.perf_counter()
        progress.eval_seconds += t2 - t1
        improved = stopper.update(valid[cfg.valid_metric], epoch)
        if improved:
            progress.best_valid, progress.best_test = valid, test
            if best_path:
                save_checkpoint(best_path, model_arrays(params, model), {"meta": meta, "epoch": epoch, "valid": valid, "test": test})
        epoch_loss = float(losses[:, 0].sum())
        progress.history.append({"epoch": epoch, "loss": epoch_loss, "lr": lr, "valid": valid, "test": test, "train_s": t1 - t0, "eval_s": t2 - t1})
        if events is not None:
            events.write_epoch(progress.history[-1])
        say(
            f"epoch {epoch:3d}  loss {epoch_loss:9.4f}  valid {cfg.valid_metric} {valid[cfg.valid_metric]:.4f}  "
            f"test {cfg.valid_metric} {test[cfg.valid_metric]:.4f}  train {t1 - t0:5.2f}s  eval {t2 - t1:5.2f}s"
            + ("  *" if improved else "")
        )
        if last_path:
            arrays = {**model_arrays(params, model), "opt_state": flatten_arrays(opt_state)}
            save_checkpoint(last_path, arrays, {"meta": meta, **progress.checkpoint_meta(epoch, host_rng)})
        epoch += 1
        bar.set_postfix_str(f"valid {cfg.valid_metric} {valid[cfg.valid_metric]:.4f}, best {stopper.best_epoch}", refresh=False)
        bar.update(1)
        if should_stop(epoch):
            stop_reason = "early_stopping"
    bar.close()
    result = TrainResult(
        best_epoch=stopper.best_epoch,
        best_valid=progress.best_valid,
        test_at_best=progress.best_test,
        epochs_run=len(progress.history),
        stop_reason=stop_reason,
        history=progress.history,
        train_seconds=progress.train_seconds,
        eval_seconds=progress.eval_seconds,
        num_params=model.num_trainable_params(),
        layout=layout,
    )
    if events is not None:
        events.write_result(result.to_dict())
    return result


def _restore_targets(tree: Any, shardings: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Name -> shape, dtype and sharding of each leaf: where orbax should put it."""
    shapes, placed = flatten_arrays(tree), flatten_arrays(shardings)
    return {name: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=placed[name]) for name, leaf in shapes.items()}


def _resume(path: str, meta: dict[str, Any], model: Recommender, params: Any, opt_state: Any, engine: EpochEngine) -> tuple[Any, Any, dict[str, Any]]:
    """Loads ``last.ckpt``: checks it belongs to this run, restores the model state, returns params, optimizer state and metadata.

    With a mesh, parameters and optimizer state are read straight onto this run's
    shardings (each device reads its own shards), whatever mesh wrote them.
    """
    targets = None
    if engine.placement is not None:
        targets = {"params": _restore_targets(params, engine.param_shardings), "opt_state": _restore_targets(opt_state, engine.opt_shardings)}
    try:
        ckpt = open_checkpoint(path)  # the metadata only: the arrays are read once it is known to fit
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    saved = ckpt.meta
    try:
        stored_groups = ckpt.stored_arrays()
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    if "opt_state" not in stored_groups or "host_rng" not in saved:
        raise TrainingError(f"cannot resume from {path}: it is not a last.ckpt written by the trainer")
    saved_meta = saved.get("meta", {})
    keys = [*meta, *(k for k in saved_meta if k not in meta)]  # a key either side has (e.g. "method")
    first = ("model", "mg", "method")  # what decides the run most: named before the rest
    mismatched = [
        difference
        for k in [*(k for k in first if k in keys), *(k for k in keys if k not in first)]
        if k not in _RESUME_IGNORES
        for difference in _resume_differences(k, saved_meta.get(k), meta.get(k))
    ]
    if mismatched:
        shown = "; ".join(mismatched[:4]) + (f"; and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
        raise TrainingError(f"cannot resume from {path}: it was written with other settings ({shown})")
    done, cap = saved.get("epoch"), meta.get("train_config", {}).get("epochs")
    if isinstance(done, int) and isinstance(cap, int) and done + 1 > cap:
        # Training stops at the cap: a run already past it is not the run of that cap.
        raise TrainingError(
            f"cannot resume from {path}: it has {done + 1} epochs done, more than this run's {cap} (--epochs); "
            f"give --epochs {done + 1} or more to go on, or another --checkpoint-dir to train afresh"
        )
    try:
        expected = {**model_arrays(params, model), "opt_state": flatten_arrays(opt_state)}
        arrays = ckpt.read_arrays(expected=expected, targets=targets)
        restore_model_arrays(model, arrays, path)
        params = unflatten_like(params, arrays.get("params", {}), f"{path}: the parameters")
        opt_state = unflatten_like(opt_state, arrays.get("opt_state", {}), f"{path}: the optimizer state")
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    params = jax.tree.map(jnp.asarray, params)
    opt_state = jax.tree.map(jnp.asarray, opt_state)
    if engine.placement is not None:
        params = engine.placement.put(params, engine.param_shardings)
        opt_state = engine.place_opt_state(opt_state)
    return params, opt_state, saved


def _evaluate_untrained(
    model_cls, model, mg: MGConfig, meta, splits: SplitEvaluators, best_path, say, placement: Placement | None = None, events: TensorBoardRun | None = None
) -> TrainResult:
    """The run of a model that needs no training: one evaluation of valid and test."""
    note = "; Mirror Gradient does not apply to it (the run is the same with or without --mg)" if mg.enabled else ""
    say(f"{model_cls.name} needs no training: evaluating it once{note}")
    graphdef, state = nnx.split(model)
    if placement is not None:
        state = placement.put(state)

    def scores_fn(state, users):
        return nnx.merge(graphdef, state, copy=True).scores(users)

    t0 = time.perf_counter()
    valid, test = splits.evaluate(scores_fn, state)
    seconds = time.perf_counter() - t0
    if best_path:
        _, params, _ = nnx.split(model, nnx.Param, ...)
        save_checkpoint(best_path, model_arrays(params, model), {"meta": meta, "epoch": 0, "valid": valid, "test": test})
    metric = meta["train_config"]["valid_metric"]
    say(f"valid {metric} {valid[metric]:.4f}  test {metric} {test[metric]:.4f}  eval {seconds:5.2f}s")
    history = [{"epoch": 0, "loss": 0.0, "lr": 0.0, "valid": valid, "test": test, "train_s": 0.0, "eval_s": seconds}]
    result = TrainResult(0, valid, test, 1, "no_training", history, 0.0, seconds, model.num_trainable_params())
    if events is not None:
        events.write_epoch(history[0])
        events.write_result(result.to_dict())
    return result
