"""LGMRec's parity hook (``benchmarks/parity_maps.py``), on our side only: no torch, no reference.

The step-level check switches the Gumbel noise off on both sides; ours through
``lgmrec_ours_hook``, which makes the module's ``gumbel_softmax`` ignore its key for the rest
of this instance only. Checked: with the hook and ``keep_rate = 1`` the loss
no longer depends on the key, and equals the noise-free forward's; without it, it does.
``lgmrec_fixed_noise_ours`` adds the exported fixed noise tables instead (zero tables: the
noise-free loss and ranking; a non-zero table moves both).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from mirrorgrad_jax.models import build_config, get_model

from mirrorgrad_jax.data.synthetic import make_synthetic


def test_lgmrec_ours_hook_switches_the_noise_off(parity_maps):
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("lgmrec")
    model = cls(dataset, build_config(cls, {"embedding_size": 8, "keep_rate": 1.0, "eval_gumbel_noise": False}), rngs=nnx.Rngs(params=0))
    batch = jnp.asarray(np.array([[0, 1, 2, 3], [0, 4, 5, 6], [7, 8, 9, 10]]))
    keys = [jax.random.key(1), jax.random.key(2)]
    noisy = [float(model.loss(batch, k)) for k in keys]
    assert noisy[0] != noisy[1]
    module = sys.modules[type(model).__module__]
    original = module.gumbel_softmax
    parity_maps.lgmrec_ours_hook(model)
    quiet = [float(model.loss(batch, k)) for k in keys]
    final, ghe = model.forward(None, None)
    expected = model.batch_terms(batch, final, ghe)
    cfg = model.config
    total = float(expected["bpr"] + cfg.cl_weight * expected["hcl"] + cfg.reg_weight * expected["reg"])
    assert quiet[0] == quiet[1] == pytest.approx(total, rel=1e-6)
    parity_maps.lgmrec_ours_hook(model)  # twice: the same subclass, not a subclass of it
    assert type(model).__mro__[1] is cls
    # Nothing of the process was patched: the module's function, and another instance, are as before.
    assert module.gumbel_softmax is original
    other = cls(dataset, build_config(cls, {"embedding_size": 8, "keep_rate": 1.0}), rngs=nnx.Rngs(params=0))
    assert float(other.loss(batch, keys[0])) == pytest.approx(noisy[0], rel=1e-6)


def test_lgmrec_fixed_noise(parity_maps):
    dataset = make_synthetic(num_users=30, num_items=20, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=0)
    cls = get_model("lgmrec")
    model = cls(dataset, build_config(cls, {"embedding_size": 8, "keep_rate": 1.0}), rngs=nnx.Rngs(params=0))
    batch = jnp.asarray(np.array([[0, 1, 2, 3], [0, 4, 5, 6], [7, 8, 9, 10]]))
    final, ghe = model.forward(None, None)
    terms = model.batch_terms(batch, final, ghe)
    cfg = model.config
    quiet = float(terms["bpr"] + cfg.cl_weight * terms["hcl"] + cfg.reg_weight * terms["reg"])
    quiet_scores = np.asarray(final[:3] @ final[30:].T)
    parity_maps.lgmrec_fixed_noise_ours(model)
    assert float(model.loss(batch, jax.random.key(1))) == pytest.approx(quiet, rel=1e-6)
    np.testing.assert_allclose(np.asarray(model.scores(jnp.arange(3))), quiet_scores, rtol=1e-5, atol=1e-6)
    model.parity_gumbel_users[...] = jax.random.gumbel(jax.random.key(3), model.parity_gumbel_users[...].shape)
    noisy = [float(model.loss(batch, jax.random.key(k))) for k in (1, 2)]
    assert noisy[0] == noisy[1] != pytest.approx(quiet, rel=1e-6)
