"""LGMRec: parameters, the local and global embeddings by hand, the Gumbel-softmax and dropout
of the hyperedges, the hyperedge contrastive loss and the regulariser, the stochastic
evaluation of the reference (reproducible here) and its deterministic option, modalities,
configuration.

Tolerances: float32 model results against float64 numpy references at ``rtol = 1e-5`` /
``atol = 1e-5`` (a few float32 ulps after sparse sums, softmaxes at temperature 0.2, which
multiply logit rounding by 5, and a logsumexp); the unnormalised hypergraph embeddings, whose
entries grow with the layers, at ``1e-5`` of their largest entry; equal seeds must give
bit-equal scores.
The noise and the masks of the numpy references are drawn from the model's keys as
:meth:`LGMRec.forward` documents its use of them (``_draws``).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import packaged_config, random_batch
from mirrorgrad_jax.models import Constant, EpochSample
from mirrorgrad_jax.models.lgmrec import (
    LGMRec,
    LGMRecConfig,
    gumbel_softmax,
    hyperedge_contrastive_loss,
    hypergraph_layers,
)

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.train import (
    MGConfig,
    TrainConfig,
    evaluate_model,
    load_trained_model,
    train,
)

D, K = 8, 3
TOL = {"rtol": 1e-5, "atol": 1e-5}
PARAMS = ("users", "items", "image_trs", "image_hyper", "text_trs", "text_hyper")


def _model(ds, seed=0, **overrides):
    config = dataclasses.replace(LGMRecConfig(embedding_size=D, hyper_num=K, cl_weight=0.1, reg_weight=0.01), **overrides)
    return LGMRec(ds, config, rngs=nnx.Rngs(seed))


_forward = nnx.jit(lambda model, gumbel_key, dropout_key: model.forward(gumbel_key, dropout_key))
_forward_clean = nnx.jit(lambda model: model.forward(None, None))
_terms = nnx.jit(lambda model, batch, key: model.loss_terms(batch, key))
_loss = nnx.jit(lambda model, batch, key: model.loss(batch, key))
_scores = nnx.jit(lambda model, users: model.scores(users))


# -- numpy references -----------------------------------------------------------------------


def _np(x):
    return np.asarray(x, np.float64)


def _rownorm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _graphs(ds):
    """(R (U, I) 0/1, A_sym (N, N) with binary degrees + 1e-7), densely."""
    u_n, i_n = ds.num_users, ds.num_items
    r = np.zeros((u_n, i_n))
    r[ds.train[:, 0], ds.train[:, 1]] = 1.0
    a = np.zeros((u_n + i_n,) * 2)
    a[:u_n, u_n:], a[u_n:, :u_n] = r, r.T
    deg = a.sum(1) + 1e-7
    return r, a / np.sqrt(deg[:, None] * deg[None, :])


def _draws(model, key):
    """The Gumbel noise (image items, image users, text items, text users) and the keep masks of ``key``."""
    u_n, i_n, k = model.num_users, model.num_items, model.config.hyper_num
    gumbel_key, dropout_key = jax.random.split(key)
    keys = jax.random.split(gumbel_key, 4)
    noise = [_np(jax.random.gumbel(kk, shape)) for kk, shape in zip(keys, [(i_n, k), (u_n, k), (i_n, k), (u_n, k)])]
    keep = np.asarray(jax.random.bernoulli(dropout_key, model.config.keep_rate, (2, u_n + i_n, k)))
    return noise, keep


def _np_forward(model, ds, noise=None, keep=None):
    """(final, {"image": GHE_v, "text": GHE_t}) in float64, the reference's forward written out."""
    cfg = model.config
    p = {name: _np(getattr(model, name)[...]) for name in PARAMS}
    u_n = ds.num_users
    r, a = _graphs(ds)
    x = np.concatenate([p["users"], p["items"]])
    if cfg.cf_model == "lightgcn":
        layers = [x]
        for _ in range(cfg.n_ui_layers):
            layers.append(a @ layers[-1])
        cge = np.mean(layers, axis=0)
    else:
        cge = x
    local, ghe = cge.copy(), {}
    for m, role in enumerate(("image", "text")):
        feats = _np(ds.features[role])
        f = feats @ p[f"{role}_trs"]
        users_f = (r @ f) / (r.sum(1, keepdims=True) + 1e-7)  # the degree-normalised SUM of the items' rows
        h = np.concatenate([users_f, f])
        for _ in range(cfg.n_mm_layers):
            h = a @ h
        local = local + _rownorm(h)
        item_logits = feats @ p[f"{role}_hyper"]
        user_logits = r @ item_logits
        if noise is not None:
            item_logits, user_logits = item_logits + noise[2 * m], user_logits + noise[2 * m + 1]
        item_edges, user_edges = _softmax(item_logits / cfg.tau), _softmax(user_logits / cfg.tau)
        if keep is not None:
            user_edges = np.where(keep[m, :u_n], user_edges / cfg.keep_rate, 0.0)
            item_edges = np.where(keep[m, u_n:], item_edges / cfg.keep_rate, 0.0)
        xi = cge[u_n:]
        for _ in range(cfg.n_hyper_layer):
            lat = item_edges.T @ xi
            xi, xu = item_edges @ lat, user_edges @ lat
        ghe[role] = np.concatenate([xu, xi])
    return local + cfg.alpha * _rownorm(ghe["image"] + ghe["text"]), ghe


def _np_ssl(e1, e2, every, tau):
    """The reference's ``ssl_triple_loss``, literally: -sum log(exp(pos / tau) / sum exp(all / tau))."""
    a, b, c = _rownorm(e1), _rownorm(e2), _rownorm(every)
    pos = np.exp(np.sum(a * b, 1) / tau)
    total = np.exp(a @ c.T / tau).sum(1)
    return -np.log(pos / total).sum()


def _np_terms(final, ghe, batch, u_n, tau):
    users, pos, neg = (np.asarray(row) for row in batch)
    u, p, n = final[users], final[u_n + pos], final[u_n + neg]
    x = np.sum(u * p, 1) - np.sum(u * n, 1)
    v, t = ghe["image"], ghe["text"]
    return {
        "bpr": -np.mean(np.log(1 / (1 + np.exp(-x)))),
        "hcl": _np_ssl(v[users], t[users], t[:u_n], tau) + _np_ssl(v[u_n + pos], t[u_n + pos], t[u_n:], tau),
        "reg": (np.linalg.norm(u) + np.linalg.norm(p) + np.linalg.norm(n)) / len(users),  # NON-squared norms
    }


# -- tests ----------------------------------------------------------------------------------


def test_parameter_count_matches_card_and_features_are_frozen(tiny):
    model = _model(tiny)
    # The reference's count: d(U + I) + per modality F (d + hyper_num); the feature tables are frozen.
    expected = D * (tiny.num_users + tiny.num_items) + sum(f.shape[1] * (D + K) for f in tiny.features.values())
    assert model.num_trainable_params() == expected
    assert isinstance(model.image_feat, Constant) and isinstance(model.text_feat, Constant)
    np.testing.assert_array_equal(np.asarray(model.image_feat[...]), np.asarray(tiny.features["image"], np.float32))
    assert isinstance(model.eval_noise_seed, EpochSample)
    u, i, d, k, fv, ft = 19_445, 7_050, 64, 4, 4096, 384  # Baby
    assert d * (u + i) + fv * (d + k) + ft * (d + k) == 2_000_320


@pytest.mark.parametrize(
    "overrides",
    [{}, {"cf_model": "mf", "n_mm_layers": 1, "n_hyper_layer": 2, "alpha": 0.6}, {"n_ui_layers": 3, "n_mm_layers": 0, "n_hyper_layer": 3}],
    ids=["defaults", "mf-two-hyper-layers", "three-ui-layers-no-mm"],
)
def test_noise_free_forward_by_hand(tiny, overrides):
    # Local (CGE + normalised MGE whose users are the mean of their items) + alpha * normalised GHE.
    model = _model(tiny, **overrides)
    final, ghe = _forward_clean(model)
    want, want_ghe = _np_forward(model, tiny)
    np.testing.assert_allclose(np.asarray(final), want, **TOL)
    for role in ("image", "text"):
        # Unnormalised and growing with the layers: compared relative to the table's largest entry.
        np.testing.assert_allclose(np.asarray(ghe[role]), want_ghe[role], rtol=0, atol=1e-5 * np.abs(want_ghe[role]).max())


def test_training_loss_by_hand_with_the_keys_gumbel_noise_and_dropout(tiny):
    model = _model(tiny, keep_rate=0.4)
    batch = random_batch(tiny, 24)
    key = jax.random.key(5)
    noise, keep = _draws(model, key)
    assert 0.25 < keep.mean() < 0.55  # keep_rate 0.4 over 2 * 100 * 3 entries
    final, ghe = _np_forward(model, tiny, noise, keep)
    want = _np_terms(final, ghe, batch, tiny.num_users, 0.2)
    got = {name: float(value) for name, value in _terms(model, batch, key).items()}
    for name in ("bpr", "hcl", "reg"):
        np.testing.assert_allclose(got[name], want[name], **TOL, err_msg=name)
    np.testing.assert_allclose(float(_loss(model, batch, key)), want["bpr"] + 0.1 * want["hcl"] + 0.01 * want["reg"], **TOL)
    # Another key, another draw (noise and masks): the training forward is stochastic.
    assert abs(float(_loss(model, batch, jax.random.key(6))) - float(_loss(model, batch, key))) > 1e-6


def test_keep_rate_one_drops_nothing(tiny):
    model = _model(tiny, keep_rate=1.0)
    key = jax.random.key(2)
    noise, _ = _draws(model, key)
    final, _ = _forward(model, jax.random.split(key)[0], jax.random.split(key)[1])
    np.testing.assert_allclose(np.asarray(final), _np_forward(model, tiny, noise)[0], **TOL)


def test_gumbel_softmax_is_torchs():
    logits = jnp.asarray([[0.3, -1.0, 1.2, 0.0]])
    np.testing.assert_allclose(np.asarray(gumbel_softmax(logits, 0.2, None)), _softmax(_np(logits) / 0.2), rtol=1e-6)
    # Standard Gumbel noise: the argmax of the samples follows softmax(logits) (the Gumbel-max
    # trick). 40,000 draws: a frequency's standard error is < 0.0025; tolerance 0.012.
    samples = gumbel_softmax(jnp.broadcast_to(logits, (40_000, 4)), 0.2, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(samples.sum(1)), 1.0, rtol=1e-5)
    freq = np.bincount(np.asarray(jnp.argmax(samples, 1)), minlength=4) / 40_000
    np.testing.assert_allclose(freq, _softmax(_np(logits))[0], atol=0.012)


def test_hyperedge_contrastive_loss_is_the_references_sum():
    rng = np.random.default_rng(0)
    e1, e2, every = rng.normal(size=(5, 6)), rng.normal(size=(5, 6)), rng.normal(size=(9, 6))
    got = float(hyperedge_contrastive_loss(jnp.asarray(e1), jnp.asarray(e2), jnp.asarray(every), 0.2))
    np.testing.assert_allclose(got, _np_ssl(e1, e2, every, 0.2), rtol=1e-5)
    # A sum over the batch rows, not a mean: the batch twice over gives twice the loss.
    doubled = hyperedge_contrastive_loss(jnp.asarray(np.tile(e1, (2, 1))), jnp.asarray(np.tile(e2, (2, 1))), jnp.asarray(every), 0.2)
    np.testing.assert_allclose(float(doubled), 2 * got, rtol=1e-5)


def test_hypergraph_layers_by_hand():
    rng = np.random.default_rng(1)
    h_i, h_u, x = rng.random((4, 3)), rng.random((5, 3)), rng.normal(size=(4, 2))
    users, items = hypergraph_layers(jnp.asarray(h_i), jnp.asarray(h_u), jnp.asarray(x), 2)
    lat1 = h_i.T @ x
    lat2 = h_i.T @ (h_i @ lat1)
    np.testing.assert_allclose(np.asarray(items), h_i @ lat2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(users), h_u @ lat2, rtol=1e-5)  # users from the LAST layer's latent only
    with pytest.raises(ValueError, match="n_layers >= 1"):
        hypergraph_layers(jnp.asarray(h_i), jnp.asarray(h_u), jnp.asarray(x), 0)


def test_evaluation_samples_gumbel_noise_from_the_stored_seed_without_dropout(tiny):
    # The reference's full_sort_predict runs under model.eval(): dropout off, Gumbel noise on.
    model = _model(tiny, keep_rate=0.3)
    users = jnp.arange(tiny.num_users)
    scores = np.asarray(_scores(model, users))
    u_n, i_n = tiny.num_users, tiny.num_items
    key = model.evaluation_key()
    noise = [_np(jax.random.gumbel(k, s)) for k, s in zip(jax.random.split(key, 4), [(i_n, K), (u_n, K), (i_n, K), (u_n, K)])]
    final, _ = _np_forward(model, tiny, noise)
    np.testing.assert_allclose(scores, final[:u_n] @ final[u_n:].T, **TOL)
    clean, _ = _np_forward(model, tiny)
    assert np.abs(scores - clean[:u_n] @ clean[u_n:].T).max() > 1e-3  # the noise matters
    # Reproducible: the same seed gives bit-equal scores, block by block.
    np.testing.assert_array_equal(np.asarray(_scores(model, users[:7])), scores[:7])
    np.testing.assert_array_equal(np.asarray(_scores(model, users)), scores)
    # pre_epoch draws the next evaluation's seed from the host generator, reproducibly.
    seeds = []
    for _ in range(2):
        model.pre_epoch(np.random.default_rng(11))
        seeds.append(int(model.eval_noise_seed[...]))
    assert seeds[0] == seeds[1]
    again = np.asarray(_scores(model, users))
    assert np.abs(again - scores).max() > 1e-3


def test_deterministic_evaluation_option(tiny):
    model = _model(tiny, eval_gumbel_noise=False)
    users = jnp.arange(tiny.num_users)
    scores = np.asarray(_scores(model, users))
    clean, _ = _np_forward(model, tiny)
    u_n = tiny.num_users
    np.testing.assert_allclose(scores, clean[:u_n] @ clean[u_n:].T, **TOL)
    model.pre_epoch(np.random.default_rng(3))  # a new seed changes nothing
    np.testing.assert_array_equal(np.asarray(_scores(model, users)), scores)
    # No dropout at evaluation: keep_rate does not enter the scores (equal parameters, equal seed).
    other = _model(tiny, eval_gumbel_noise=False, keep_rate=0.9)
    np.testing.assert_array_equal(np.asarray(_scores(other, users)), np.asarray(_scores(_model(tiny, eval_gumbel_noise=False), users)))


def test_the_evaluation_option_leaves_training_unchanged(tiny):
    # The seed is drawn whatever the option, and the loss does not read it: same batches, same steps.
    batch, key = random_batch(tiny, 24), jax.random.key(3)
    noisy, clean = _model(tiny), _model(tiny, eval_gumbel_noise=False)
    assert float(_loss(noisy, batch, key)) == float(_loss(clean, batch, key))
    noisy.pre_epoch(np.random.default_rng(8))
    clean.pre_epoch(np.random.default_rng(8))
    assert int(noisy.eval_noise_seed[...]) == int(clean.eval_noise_seed[...])


def test_a_checkpoint_keeps_its_epochs_evaluation_seed_and_evaluates_to_the_runs_numbers(tiny, tmp_path):
    # One epoch of one batch (576 rows): the best checkpoint is that epoch's.
    cfg = TrainConfig(epochs=1, batch_size=576, learning_rate=5e-3, valid_metric="recall@20", patience=10, seed=4, topk=(5, 10, 20))
    result = train(LGMRec, LGMRecConfig(embedding_size=D, hyper_num=K), tiny, cfg, MGConfig(enabled=False), checkpoint_dir=tmp_path, log=None)
    trained = load_trained_model(str(tmp_path / "best.ckpt"), tiny)
    # The checkpoint holds the seed pre_epoch drew for the evaluation, not the construction's.
    built = LGMRec(tiny, trained.model_config, rngs=nnx.Rngs(params=cfg.seed))
    assert int(trained.model.eval_noise_seed[...]) != int(built.eval_noise_seed[...])
    for _ in range(2):
        metrics = evaluate_model(trained.model, tiny, topk=trained.topk, eval_batch_size=trained.eval_batch_size)
        assert metrics == {"valid": result.best_valid, "test": result.test_at_best}


def test_both_modalities_are_required():
    # The reference's one-modality branch cannot run (UnboundLocalError in forward): refused here.
    image_only = make_synthetic(num_users=12, num_items=8, modalities={"image": 16}, seed=1)
    with pytest.raises(ConfigError, match=r"LGMRec needs both an image and a text feature table.*text_modality='text'"):
        LGMRec(image_only, LGMRecConfig(), rngs=nnx.Rngs(0))


def test_another_modality_plays_the_image_role_when_there_is_no_image():
    ds = make_synthetic(num_users=12, num_items=8, modalities={"meta": 16, "text": 8}, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LGMRec(ds, LGMRecConfig(embedding_size=4), rngs=nnx.Rngs(0))
    assert any("'meta' in the image role" in str(w.message) for w in caught)
    assert model.image_feat[...].shape == (8, 16)


def test_config_refuses_what_the_reference_cannot_run():
    with pytest.raises(ConfigError, match="n_hyper_layer"):
        LGMRecConfig(n_hyper_layer=0)  # the reference's HGNN layer returns an undefined user table
    with pytest.raises(ConfigError, match="keep_rate"):
        LGMRecConfig(keep_rate=0.0)
    with pytest.raises(ConfigError, match="cf_model"):
        LGMRecConfig(cf_model="ngcf")


def test_yaml_is_the_baby_block_and_the_defaults():
    config = packaged_config("lgmrec", LGMRecConfig)
    grid = config["model_config"]
    assert grid == {f.name: getattr(LGMRecConfig(), f.name) for f in dataclasses.fields(LGMRecConfig)}
    assert (grid["n_hyper_layer"], grid["hyper_num"], grid["keep_rate"], grid["alpha"]) == (1, 4, 0.5, 0.3)
    assert (grid["cl_weight"], grid["reg_weight"], grid["tau"], grid["cf_model"]) == (1e-4, 1e-6, 0.2, "lightgcn")
    assert config["train"]["learning_rate"] == 1e-3 and config["mg"]["alpha2"] == [0.1, 0.2, 0.3]
