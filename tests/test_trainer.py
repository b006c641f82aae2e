"""End-to-end training: beats random, deterministic, resumable, stops on NaN."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest

from mirrorgrad_jax.train.checkpoint import flatten_arrays, load_checkpoint
from flax import nnx

from mirrorgrad_jax.models import Constant

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.models import VBPR, BPRMF, VBPRConfig, BPRMFConfig
from mirrorgrad_jax.train import MGConfig, TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def small():
    return make_synthetic(num_users=200, num_items=300, seed=3)


def _cfg(**kw):
    base = dict(epochs=6, batch_size=128, learning_rate=1e-2, valid_metric="recall@20", patience=20, seed=5)
    return TrainConfig(**{**base, **kw})


def _random_recall20(ds):
    """Expected recall@20 of a random ranking of the non-train items, by simulation (3 draws)."""
    from mirrorgrad_jax.evaluation import RankingEvaluator

    ev = RankingEvaluator(ds.num_items, ds.train, ds.test)
    import jax

    return np.mean([ev.evaluate(lambda s, u: jax.random.uniform(jax.random.fold_in(jax.random.key(s), 0), (u.shape[0], ds.num_items)), k)["recall@20"] for k in range(3)])


@pytest.mark.parametrize("mg", [MGConfig(enabled=False), MGConfig(enabled=True, alpha2=0.2)])
def test_tiny_run_beats_random_ranking(small, mg):
    result = train(BPRMF, BPRMFConfig(embedding_size=16), small, _cfg(epochs=15), mg, log=None)
    assert result.epochs_run == 15 and result.stop_reason == "max_epochs"
    random_recall = _random_recall20(small)
    # Random recall@20 here is ~0.08 (std over seeds ~0.01); learning popularity and affinity
    # for 15 epochs gives ~2x. 1.5x is far outside random variation yet robust to seeds.
    assert result.test_at_best["recall@20"] > 1.5 * random_recall, (result.test_at_best, random_recall)


def test_same_seed_same_metrics_and_scan_equals_per_batch(small):
    mg = MGConfig(enabled=True, alpha2=0.3)
    a = train(VBPR, VBPRConfig(embedding_size=8), small, _cfg(epochs=3), mg, log=None)
    b = train(VBPR, VBPRConfig(embedding_size=8), small, _cfg(epochs=3), mg, log=None)
    assert [h["valid"] for h in a.history] == [h["valid"] for h in b.history]
    c = train(VBPR, VBPRConfig(embedding_size=8), small, _cfg(epochs=3, dispatch="per_batch"), mg, log=None)
    # The scan and the per-batch dispatch run the same float32 steps: losses agree to 1e-4 relative.
    np.testing.assert_allclose([h["loss"] for h in a.history], [h["loss"] for h in c.history], rtol=1e-4)


def test_resume_from_checkpoint_ends_identical(small, tmp_path):
    mg = MGConfig(enabled=True, alpha2=0.2)
    cfg = _cfg(epochs=5)
    full = train(VBPR, VBPRConfig(embedding_size=8), small, cfg, mg, log=None)
    part = train(VBPR, VBPRConfig(embedding_size=8), small, cfg, mg, checkpoint_dir=tmp_path, stop_after_epochs=2, log=None)
    assert part.stop_reason == "interrupted" and part.epochs_run == 2
    assert (tmp_path / "last.ckpt").exists() and (tmp_path / "best.ckpt").exists()
    resumed = train(VBPR, VBPRConfig(embedding_size=8), small, cfg, mg, checkpoint_dir=tmp_path, resume=True, log=None)
    assert resumed.epochs_run == 5
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.test_at_best == full.test_at_best


def test_resume_with_other_settings_is_refused(small, tmp_path):
    train(BPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=1), MGConfig(enabled=False), checkpoint_dir=tmp_path, log=None)
    with pytest.raises(TrainingError, match=r"it was written with other settings \(mg\.enabled: false there, true here"):
        train(BPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=2), MGConfig(enabled=True), checkpoint_dir=tmp_path, resume=True, log=None)


def test_a_resume_refusal_tells_long_settings_apart():
    """Values past 40 characters are cut where they differ: their tails when their heads agree."""
    from mirrorgrad_jax.train.loop import _resume_differences

    there, here = {"source": "/data/" + "x" * 60 + "/baby"}, {"source": "/data/" + "x" * 60 + "/kids"}
    (line,) = _resume_differences("dataset", there, here)
    # the last 37 characters of the JSON string: 31 x, then /kids and the closing quote
    assert line == 'dataset.source: ...' + "x" * 31 + '/baby" there, ...' + "x" * 31 + '/kids" here'
    assert _resume_differences("train_config", {"epochs": 2, "seed": 1}, {"epochs": 9, "seed": 1}) == []  # the cap is free
    assert _resume_differences("mg", {"enabled": False}, {"enabled": True, "alpha2": 0.2}) == ["mg.enabled: false there, true here"]


class _PoisonedBPRMF(BPRMF):
    """BPR-MF whose loss turns NaN from the third epoch on (pre_epoch flips a constant)."""

    name = "poisoned-bprmf-test"

    def __init__(self, dataset, config, *, rngs):
        super().__init__(dataset, config, rngs=rngs)
        self.epochs_seen = 0
        self.poison = Constant(jnp.zeros(()))

    def pre_epoch(self, rng):
        self.epochs_seen += 1
        self.poison = Constant(jnp.asarray(np.nan if self.epochs_seen > 2 else 0.0, jnp.float32))

    def loss(self, batch, key):
        return super().loss(batch, key) + self.poison[...]


def test_nan_loss_stops_and_keeps_best(small, tmp_path):
    messages = []
    result = train(
        _PoisonedBPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=10), MGConfig(enabled=True),
        checkpoint_dir=tmp_path, log=messages.append,
    )
    assert result.stop_reason == "nan_loss" and result.epochs_run == 2
    assert any("non-finite (nan) in the first pass of batch 0" in m for m in messages), messages
    assert 0 <= result.best_epoch <= 1
    best = load_checkpoint(tmp_path / "best.ckpt")
    assert best.meta["epoch"] == result.best_epoch
    assert all(np.all(np.isfinite(p)) for p in best.arrays["params"].values())


class _MirrorPassNaNBPRMF(BPRMF):
    """BPR-MF plus ``armed * sqrt(t - w)`` for a scalar parameter ``w`` (0 until armed).

    From the third epoch on (``pre_epoch`` arms it) the first pass of batch 0 is finite
    at ``w = 0`` but its step pushes ``w`` past ``t``, so the MIRROR pass of that batch
    computes the square root of a negative number.
    """

    name = "mirror-nan-bprmf-test"

    def __init__(self, dataset, config, *, rngs):
        super().__init__(dataset, config, rngs=rngs)
        self.epochs_seen = 0
        self.w = nnx.Param(jnp.zeros(()))
        self.armed = Constant(jnp.zeros(()))

    def pre_epoch(self, rng):
        self.epochs_seen += 1
        self.armed = Constant(jnp.asarray(1.0 if self.epochs_seen > 2 else 0.0, jnp.float32))

    def loss(self, batch, key):
        return super().loss(batch, key) + self.armed[...] * jnp.sqrt(1e-3 - self.w[...])


def test_nan_in_the_mirror_pass_stops_and_keeps_best(small, tmp_path):
    messages = []
    result = train(
        _MirrorPassNaNBPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=10), MGConfig(enabled=True),
        checkpoint_dir=tmp_path, log=messages.append,
    )
    assert result.stop_reason == "nan_loss" and result.epochs_run == 2
    assert any("non-finite (nan) in the mirror pass of batch 0" in m for m in messages), messages
    best = load_checkpoint(tmp_path / "best.ckpt")
    assert best.meta["epoch"] == result.best_epoch
    assert all(np.all(np.isfinite(p)) for p in best.arrays["params"].values())


def test_learning_rate_schedule_reaches_the_optimizer(small, tmp_path):
    # lr_schedule (0.5, 1): the rate halves every epoch. Read it back from the optimizer
    # state saved in last.ckpt (what the optimizer actually used in the last epoch).
    cfg = _cfg(epochs=3, learning_rate=1e-2, lr_schedule=(0.5, 1))
    scheduled = train(BPRMF, BPRMFConfig(embedding_size=8), small, cfg, MGConfig(enabled=True), checkpoint_dir=tmp_path, log=None)
    saved = load_checkpoint(tmp_path / "last.ckpt").arrays["opt_state"]
    rates = [v for k, v in saved.items() if k.endswith("learning_rate")]
    assert len(rates) == 1 and float(rates[0]) == pytest.approx(1e-2 * 0.25, rel=1e-6)
    assert [h["lr"] for h in scheduled.history] == pytest.approx([1e-2, 5e-3, 2.5e-3], rel=1e-6)
    constant = train(BPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=3, learning_rate=1e-2), MGConfig(enabled=True), log=None)
    assert scheduled.history[0]["loss"] == constant.history[0]["loss"]  # epoch 0 runs at lr0 in both
    assert scheduled.history[2]["loss"] != constant.history[2]["loss"]


def test_bad_train_config_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="valid_metric"):
        TrainConfig(valid_metric="recall@7")


def _literal_reference_loop(ds, cfg, mg, clip_both_passes=False):
    """The reference trainer written out: optimizer steps on (scaled) gradients, torch's clip placement.

    On a mirror batch: step on alpha1*g (never clipped), then on clip(-alpha2*g'); other
    batches step on clip(g). ``clip_both_passes`` clips the alpha1 step too (NOT the reference).
    """
    import jax
    import optax

    from mirrorgrad_jax.data import epoch_batches
    from mirrorgrad_jax.optim import torch_clip_grad_norm

    model = BPRMF(ds, BPRMFConfig(embedding_size=8), rngs=nnx.Rngs(params=cfg.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grad = jax.jit(jax.grad(lambda p, b, k: nnx.merge(graphdef, p, rest, copy=True).loss(b, k)))
    opt = optax.adam(cfg.learning_rate, b1=0.9, b2=0.999, eps=1e-8) if cfg.optimizer == "adam" else optax.sgd(cfg.learning_rate)
    state = opt.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)))
    clip = lambda g: torch_clip_grad_norm(g, cfg.clip_grad_norm)  # noqa: E731
    scale = lambda c, g: jax.tree.map(lambda x: c * x, g)  # noqa: E731
    host = np.random.default_rng(cfg.seed)
    steps = -(-len(ds.train) // cfg.batch_size)
    for epoch in range(cfg.epochs):
        epoch_data = epoch_batches(ds, cfg.batch_size, host, negatives=True)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), epoch), steps)
        for b, batch in enumerate(epoch_data.batches()):
            batch = jnp.asarray(batch)
            g = grad(params, batch, keys[b])
            if b % mg.beta == 0:
                first = scale(mg.alpha1, g)
                params, state = step(params, state, clip(first) if clip_both_passes else first)
                g2 = grad(params, batch, jax.random.fold_in(keys[b], 1))
                params, state = step(params, state, clip(scale(-mg.alpha2, g2)))
            else:
                params, state = step(params, state, clip(g))
    return {k: np.asarray(v) for k, v in flatten_arrays(params).items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clip_grad_norm_follows_the_reference_placement(small, tmp_path, optimizer):
    # A clip norm far below the gradients' (~1e-2 here), so every step is clipped.
    cfg = _cfg(epochs=2, learning_rate=1.0 if optimizer == "sgd" else 1e-2, clip_grad_norm=1e-4, optimizer=optimizer)
    mg = MGConfig(enabled=True, alpha2=0.3)
    train(BPRMF, BPRMFConfig(embedding_size=8), small, cfg, mg, checkpoint_dir=tmp_path, log=None)
    got = load_checkpoint(tmp_path / "last.ckpt").arrays["params"]
    want = _literal_reference_loop(small, cfg, mg)
    other = _literal_reference_loop(small, cfg, mg, clip_both_passes=True)
    # Same float32 steps in a different program (scan vs eager): 1e-5 absolute.
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    # The test can tell the placements apart: clipping the alpha1 step too lands elsewhere.
    assert max(np.abs(got[n] - other[n]).max() for n in want) > 1e-4


def test_min_epochs_defers_early_stopping(small):
    # patience 0 stops after the first non-improving epoch; min_epochs keeps it going.
    short = train(BPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=8, patience=0, learning_rate=0.5), MGConfig(enabled=False), log=None)
    assert short.stop_reason == "early_stopping" and short.epochs_run < 8
    long = train(BPRMF, BPRMFConfig(embedding_size=8), small, _cfg(epochs=8, patience=0, min_epochs=8, learning_rate=0.5), MGConfig(enabled=False), log=None)
    assert long.epochs_run == 8
    assert [h["loss"] for h in long.history[: short.epochs_run]] == [h["loss"] for h in short.history]
