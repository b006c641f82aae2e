"""Small builders and checks shared by the model tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.data import RecDataset, make_synthetic


def random_batch(ds, n: int = 16, seed: int = 0) -> jnp.ndarray:
    """An int32 (3, n) batch [users; positives; random items] of distinct train rows."""
    rng = np.random.default_rng(seed)
    rows = ds.train[rng.choice(len(ds.train), n, replace=False)]
    return jnp.asarray(np.stack([rows[:, 0], rows[:, 1], rng.integers(0, ds.num_items, n)]), jnp.int32)


# Forward passes are jitted: on CPU one compile costs less than dispatching the ops one by one.
jit_representation = nnx.jit(lambda model: model.representation())
jit_scores = nnx.jit(lambda model, users: model.scores(users))
jit_loss = nnx.jit(lambda model, batch, key: model.loss(batch, key))


@functools.partial(jax.jit, static_argnums=0)
def value_and_grad_constants_fixed(graphdef, params, rest, batch):
    """(loss, d loss / d params) with the constants (``rest``) held fixed, as the trainer differentiates.

    ``graphdef`` is static: models with equal configs and shapes share one compilation.
    """
    return jax.value_and_grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(batch, jax.random.key(0)))(params)


def grads_constants_fixed(graphdef, params, rest, batch):
    """d loss / d params with the constants held fixed (see :func:`value_and_grad_constants_fixed`)."""
    return value_and_grad_constants_fixed(graphdef, params, rest, batch)[1]


def three_block_dataset():
    """60 users x 40 items whose 576 = 9 x 64 train rows make an epoch of exactly three MG blocks
    at batch size 64, so a training test compiles one epoch scan and nothing else."""
    ds = make_synthetic(num_users=60, num_items=40, seed=30)
    assert len(ds.train) == 576
    return ds


def first_576_rows(ds):
    """``ds`` with its first 576 train rows: 9 batches of 64, three MG blocks, no smaller last batch."""
    return RecDataset.from_arrays(
        "tiny576", ds.train[:576], ds.valid, ds.test, ds.features, ds.num_users, ds.num_items, verbose=False
    )


def hand_dataset():
    """3 users, 4 items; train (0,0) (0,1) (1,1) (1,2) (2,3) (2,0); image 128-d, text 64-d (the
    widths of the synthetic sets, so projections reuse their compilations)."""
    rng = np.random.default_rng(3)
    return RecDataset.from_arrays(
        "hand",
        train=[[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [2, 0]],
        valid=[[0, 2], [2, 1]],
        test=[[1, 3], [0, 3]],
        features={"image": rng.normal(size=(4, 128)), "text": rng.normal(size=(4, 64))},
        verbose=False,
    )


def check_stale_eval(make_model, ds, branch: str) -> None:
    """With ``stale_eval`` the ranking uses the last training forward; without it, the current parameters.

    ``make_model(ds, stale_eval=...)`` builds the model; ``branch`` names the module whose
    ``pref`` table is changed after one training forward. Tolerances: the recomputed scores
    agree to float32 rounding (1e-6); a stale ranking must differ from them by > 1e-4.
    """
    batch = random_batch(ds)
    for stale in (False, True):
        model = make_model(ds, stale_eval=stale)
        jit_loss(model, batch, jax.random.key(0))
        before = np.asarray(jit_scores(model, jnp.arange(5)))
        module = getattr(model, branch)
        module.pref[...] = module.pref[...] * 3.0 + 0.1
        after = np.asarray(jit_scores(model, jnp.arange(5)))
        fresh = np.asarray(jit_representation(model))
        recomputed = fresh[:5] @ fresh[ds.num_users :].T
        if stale:
            np.testing.assert_array_equal(after, before)
            assert np.abs(after - recomputed).max() > 1e-4
        else:
            np.testing.assert_allclose(after, recomputed, rtol=1e-6, atol=1e-6)


def positive_batch(ds, n: int = 16, seed: int = 0) -> jnp.ndarray:
    """An int32 (2, n) batch [users; positives] of distinct train rows, for models without negatives."""
    rows = ds.train[np.random.default_rng(seed).choice(len(ds.train), n, replace=False)]
    return jnp.asarray(rows.T, jnp.int32)


def packaged_config(name: str, config_cls) -> dict:
    """A model's packaged ``models/configs/<name>.yaml``, read as the CLI reads it.

    Checks that it names the model and that every key of its ``model_config`` and ``train``
    sections is a field of ``config_cls`` and of ``TrainConfig``; returns the parsed dict.
    """
    import dataclasses
    import pathlib

    from mirrorgrad_jax.config import load_yaml
    from mirrorgrad_jax.train import TrainConfig

    path = pathlib.Path(__file__).resolve().parents[1] / "models" / "configs" / f"{name}.yaml"
    config = load_yaml(path.read_text())
    assert config["model"] == name
    assert set(config["model_config"]) <= {f.name for f in dataclasses.fields(config_cls)}, "unknown model_config keys"
    assert set(config.get("train") or {}) <= {f.name for f in dataclasses.fields(TrainConfig)}, "unknown train keys"
    return config


def mirrorgrad_commands(markdown: str) -> list[str]:
    """The ``mirrorgrad ...`` lines of a markdown text's bash blocks (continuations joined, comments cut)."""
    import re

    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("mirrorgrad "):
                commands.append(line)
    return commands


def np_info_nce(view1: np.ndarray, view2: np.ndarray, tau: float) -> float:
    """InfoNCE as the MMRec models write it, in NumPy: rows L2-normalised, row i's positive is
    row i of the other view, ``-mean log(exp(pos / tau) / sum exp(all / tau))``."""
    a = view1 / np.linalg.norm(view1, axis=1, keepdims=True)
    b = view2 / np.linalg.norm(view2, axis=1, keepdims=True)
    pos = np.exp(np.sum(a * b, 1) / tau)
    total = np.exp(a @ b.T / tau).sum(1)
    return float(np.mean(-np.log(pos / total)))
