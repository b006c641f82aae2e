"""Module paths of earlier releases still import, warn once, and give the very objects of their new homes."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from mirrorgrad_jax import _legacy

pytestmark = pytest.mark.filterwarnings("ignore:mirrorgrad_jax.* has moved:DeprecationWarning")


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("mirrorgrad_jax.trainer", "train", "mirrorgrad_jax.train.loop"),
        ("mirrorgrad_jax.trainer", "MGConfig", "mirrorgrad_jax.train.config"),
        ("mirrorgrad_jax.transform", "mirror_gradient", "mirrorgrad_jax.optim.mirror"),
        ("mirrorgrad_jax.transform", "is_mirror_batch", "mirrorgrad_jax.optim.schedule"),
        ("mirrorgrad_jax.steps", "make_train_steps", "mirrorgrad_jax.optim.steps"),
        ("mirrorgrad_jax.sharding", "make_mesh", "mirrorgrad_jax.devices.mesh"),
        ("mirrorgrad_jax.sharding", "sharded_ranking_fn", "mirrorgrad_jax.evaluation.sharded"),
        ("mirrorgrad_jax.checkpoint", "load_checkpoint", "mirrorgrad_jax.train.checkpoint"),
        ("mirrorgrad_jax.comparison", "compare_runs", "mirrorgrad_jax.analysis.comparison"),
        ("mirrorgrad_jax.models.base", "dense", "mirrorgrad_jax.models.kernels"),
        ("mirrorgrad_jax.models.base", "Recommender", "mirrorgrad_jax.models.interface"),
    ],
)
def test_an_old_path_gives_the_object_of_its_new_home(old, name, new):
    module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_every_old_path_imports_and_lists_its_names():
    for old in _legacy.MOVED:
        assert dir(importlib.import_module(old)), old


def test_importing_an_old_path_warns_with_the_new_place():
    # A fresh interpreter, so the module is imported (and warns) for the first time.
    code = "import warnings; warnings.simplefilter('error'); import mirrorgrad_jax.trainer"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DeprecationWarning: mirrorgrad_jax.trainer has moved to mirrorgrad_jax.train" in result.stderr


def test_a_name_that_never_existed_is_an_attribute_error_naming_the_new_homes():
    module = importlib.import_module("mirrorgrad_jax.trainer")
    with pytest.raises(AttributeError, match=r"no attribute 'no_such_name' \(its names moved to mirrorgrad_jax.train\)"):
        module.no_such_name  # noqa: B018
