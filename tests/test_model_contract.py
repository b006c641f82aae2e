"""The model contract: what every registered model must do, checked for each one (present and future).

Parametrized over the registry, so a new model is covered the moment it registers:

* it builds on ``synthetic-small`` with its defaults, ranks every item for a block of users
  with finite scores, and holds only the declared variable kinds;
* every trainable parameter gets a gradient from a batch and no constant is a parameter;
* plain Adam steps on one batch lower its loss, and the trainer lowers it over a few
  epochs with Mirror Gradient on (through the ``mirrorgrad train`` command), whose best
  checkpoint evaluates to exactly the run's own metrics; with MIRRORGRAD_NETWORK_TESTS=1 it
  also trains an epoch on MovieLens-100K through the command line, and with
  MIRRORGRAD_SLOW_TESTS=1 SAM, ASAM and the gradient-norm penalty each lower its loss there too;
* its config declares every field's type and range, so wrong values are refused with a
  ``ConfigError`` naming the field, and its packaged reference grid builds point by point;
* a dataset it cannot use (no features; fewer items than kNN neighbours) is one clear error.

Per-model test files keep only what is specific: hand-computed forwards, parameter counts
by the reference's formulas, and the reference's quirks.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.config import Range
from mirrorgrad_jax.data import load_dataset, make_synthetic
from mirrorgrad_jax.errors import ConfigError, UserInputError
from mirrorgrad_jax.models import CHECKPOINTED, Constant, TrainingCache, available_models, build_config, get_model
from mirrorgrad_jax.train import MGConfig, TrainConfig, evaluate_model, load_trained_model
from mirrorgrad_jax.train.grid import expand
from helpers import packaged_config, positive_batch, random_batch


def _per_model(names: list[str]) -> list:
    """One parameter per model, all of a model's tests in one xdist group: a worker builds the
    model's graphs and compiles its small eager programs once for all of them (``make test``
    runs ``--dist loadgroup``; the groups still spread over the workers)."""
    return [pytest.param(name, marks=pytest.mark.xdist_group(f"model-{name}")) for name in names]


MODELS = available_models()
TRAINABLE = [name for name in MODELS if get_model(name).trainable]


@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic-small", verbose=False)


# 455 rows: synthetic-small's 1820 train rows make 4 full batches and no smaller last one.
TRAIN = {"epochs": 3, "batch_size": 455, "learning_rate": 5e-3, "valid_metric": "recall@20", "patience": 10, "seed": 3}
#: MG through the command line with beta 2: the 4 batches are two whole blocks (mirror,
#: normal), so an epoch is one compiled scan. The default beta 3 would add a single mirrored
#: step for the fourth batch, a second large program to compile per model; the suite's time
#: is mostly compile time, and the schedules are tested in test_steps.py and test_trainer.py.
MG_FLAGS = ["--mg", "--beta", "2"]
#: Plain (no MG) Adam steps on one batch in the gradient test.
PLAIN_STEPS = 5


def _build(name: str, dataset, **overrides):
    cls = get_model(name)
    return cls(dataset, build_config(cls, overrides), rngs=nnx.Rngs(params=0))


def _batch(cls, dataset, n: int = 64):
    return random_batch(dataset, n) if cls.uses_negatives else positive_batch(dataset, n)


@pytest.mark.parametrize("name", _per_model(MODELS))
def test_builds_ranks_every_item_and_holds_only_declared_state(name, small):
    model = _build(name, small)
    users = jnp.arange(7)
    if model.ranks_with_training_cache():
        # A stale-evaluation model ranks with what its first training forward caches.
        nnx.jit(lambda m, b, k: m.loss(b, k))(model, _batch(type(model), small), jax.random.key(0))
    scores = nnx.jit(lambda m, u: m.scores(u))(model, users)
    assert scores.shape == (7, small.num_items)
    assert bool(jnp.all(jnp.isfinite(scores)))
    kinds = {type(v) for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
    declared = {nnx.Param, *CHECKPOINTED, Constant, TrainingCache}
    assert kinds <= declared, f"undeclared variable kinds: {kinds - declared}"


@pytest.mark.parametrize("name", _per_model(TRAINABLE))
def test_every_trainable_parameter_gets_a_gradient_and_plain_steps_lower_the_loss(name, small):
    model = _build(name, small)
    cls = type(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(cls, small)

    @jax.jit
    def value_and_grad(params, rest):
        # The first batch of an epoch trains every parameter (LATTICE's graph learner only there).
        return jax.value_and_grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).first_batch_loss(batch, jax.random.key(1)))(params)

    loss, grads = value_and_grad(params, rest)
    assert loss.shape == () and bool(jnp.isfinite(loss))
    silent = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads) if not float(jnp.abs(g).max()) > 0]
    assert not silent, f"{name}: no gradient reaches {silent}"
    assert jax.tree.leaves(params), f"{name} has no trainable parameters"
    # Without MG: Adam steps on this batch (same key, so the loss is one function of the
    # parameters) with the program just compiled lower it. The trainer's plain steps are the
    # normal steps inside the MG run below (its blocks alternate mirror and normal steps).
    tx = optax.adam(TRAIN["learning_rate"])
    state = tx.init(params)
    losses = [float(loss)]
    for _ in range(PLAIN_STEPS):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        loss, grads = value_and_grad(params, rest)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], f"{name} (no MG): the loss did not fall: {losses}"



def _run_through_the_command_line(name: str, dataset: str, folder, *, epochs: int, method_flags=MG_FLAGS) -> tuple[dict, str]:
    """``mirrorgrad train`` with MG (or ``method_flags``) as a user runs it; returns the run's record and its best checkpoint."""
    results = folder / "results.json"
    argv = ["train", "--model", name, "--dataset", dataset, *method_flags, "--quiet", "--results", str(results),
            "--checkpoint-dir", str(folder / "runs"), "--epochs", str(epochs), "--batch-size", str(TRAIN["batch_size"]),
            "--lr", str(TRAIN["learning_rate"]), "--valid-metric", TRAIN["valid_metric"], "--seed", str(TRAIN["seed"])]  # fmt: skip
    assert main(argv) == 0
    (run,) = json.loads(results.read_text())["runs"][0]["seeds"]
    return run, str(folder / "runs" / f"combo0-seed{TRAIN['seed']}" / "best.ckpt")


@pytest.mark.parametrize("name", _per_model(MODELS))
def test_training_with_mg_lowers_the_loss_and_the_checkpoint_evaluates_to_the_runs_numbers(name, small, tmp_path):
    cls = get_model(name)
    run, checkpoint = _run_through_the_command_line(name, "synthetic-small", tmp_path, epochs=TRAIN["epochs"])
    if cls.trainable:
        losses = [h["loss"] for h in run["history"]]
        assert len(losses) == 3 and all(np.isfinite(losses))
        assert losses[-1] < losses[0], f"{name} (MG): the loss did not fall: {losses}"
    else:
        assert run["stop_reason"] == "no_training"
    trained = load_trained_model(checkpoint, small)
    metrics = evaluate_model(trained.model, small, topk=trained.topk, eval_batch_size=trained.eval_batch_size)
    assert metrics == {"valid": run["best_valid"], "test": run["test_at_best"]}


@pytest.mark.skipif(
    os.environ.get("MIRRORGRAD_NETWORK_TESTS") != "1",
    reason="MovieLens-100K is downloaded on first use; set MIRRORGRAD_NETWORK_TESTS=1 (or run it once: mirrorgrad datasets movielens-100k)",
)
@pytest.mark.parametrize("name", _per_model(MODELS))
def test_one_epoch_on_movielens_through_the_command_line(name, tmp_path):
    run, _ = _run_through_the_command_line(name, "movielens-100k", tmp_path, epochs=1)
    assert run["epochs_run"] == 1 and np.isfinite(run["history"][0]["loss"])


@pytest.mark.skipif(
    os.environ.get("MIRRORGRAD_SLOW_TESTS") != "1",
    reason=f"{3 * len(TRAINABLE)} more training runs (about 5 minutes on 2 cores), over make test's time; set MIRRORGRAD_SLOW_TESTS=1",
)
@pytest.mark.parametrize("method", ["sam", "asam", "gnp"])
@pytest.mark.parametrize("name", _per_model(TRAINABLE))
def test_each_two_pass_method_trains_the_model_through_the_command_line(name, method, tmp_path):
    """SAM, ASAM and the gradient-norm penalty, each at its defaults, through ``mirrorgrad train``:
    the second pass meets every model's dropout keys, first-batch parameters and caches."""
    run, _ = _run_through_the_command_line(name, "synthetic-small", tmp_path, epochs=TRAIN["epochs"], method_flags=["--method", method])
    losses = [h["loss"] for h in run["history"]]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0], f"{name} ({method}): the loss did not fall: {losses}"


def _wrong_values(annotation) -> list:
    """Values the declared type refuses: outside each range, off the choices, of the wrong kind."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        wrong = []
        for r in (e for e in extras if isinstance(e, Range)):
            below = r.ge - 1 if r.ge is not None else r.gt if r.gt is not None else None
            above = r.le + 1 if r.le is not None else r.lt if r.lt is not None else None
            wrong += [base(v) for v in (below, above) if v is not None]
        return wrong + (["1e-4"] if base is float else [2.5])
    if origin is typing.Literal:
        return ["not-a-choice"]
    if annotation is bool:
        return ["yes"]
    if annotation is str:
        return [3]
    if annotation is float:
        return ["0.5"]
    if annotation is int:
        return [2.5]
    return []


@pytest.mark.parametrize("name", _per_model(MODELS))
def test_config_refuses_what_its_fields_do_not_allow(name):
    cls = get_model(name).config_class
    hints = typing.get_type_hints(cls, include_extras=True)
    checked = 0
    for field in dataclasses.fields(cls):
        for value in _wrong_values(hints[field.name]):
            with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field.name}\b.*got {value!r}"):
                cls(**{field.name: value})
            checked += 1
    assert checked >= len(dataclasses.fields(cls)), f"{cls.__name__} declares too little to check"
    with pytest.raises(ConfigError, match=rf"unknown {name} option\(s\) \['no_such_option'\]"):
        build_config(get_model(name), {"no_such_option": 1})
    names = {f.name for f in dataclasses.fields(cls)}
    if {"image_modality", "text_modality"} <= names:
        with pytest.raises(ConfigError, match="image_modality and text_modality"):
            cls(image_modality="text", text_modality="text")


@pytest.mark.parametrize("name", _per_model(MODELS))
def test_every_point_of_the_packaged_reference_grid_builds(name):
    cls = get_model(name)
    config = packaged_config(name, cls.config_class)
    points = expand(config["model_config"])
    for values in points:
        build_config(cls, values)
    for values in itertools.islice(expand(config.get("train") or {}), 50):
        TrainConfig(**values)
    for values in expand(config.get("mg") or {}):
        MGConfig(**values)


@pytest.mark.parametrize("name", _per_model(MODELS))
def test_a_dataset_the_model_cannot_use_is_one_clear_error(name, small):
    cls = get_model(name)
    if cls.multimodal:
        bare = make_synthetic(num_users=30, num_items=20, modalities={}, seed=1)
        with pytest.raises(UserInputError, match=r"(?i)feature"):
            _build(name, bare)
    if "knn_k" in {f.name for f in dataclasses.fields(cls.config_class)}:
        with pytest.raises(UserInputError, match="knn_k"):
            _build(name, small, knn_k=small.num_items + 1)
