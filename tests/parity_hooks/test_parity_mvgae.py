"""MVGAE's parity map and our-side hook (``benchmarks/parity_maps.py``), without torch or a reference checkout.

The check switches the conv dropout off (``conv_dropout=0`` in the map) and gives both sides one
fixed table for the reparameterisation noise. Checked here: with the hook the loss no longer
depends on the key (through split / merge and jit, as in the trainer), the table is the one drawn, the
mean-aggregation weights keep their values (float64 rounding only), and the map covers every
parameter of ours and every frozen tensor it takes from the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def test_fixed_noise_hook_and_map(parity, parity_maps):
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.data.synthetic import make_synthetic

    pmap = parity.PARITY_MAPS["mvgae"]
    dataset = make_synthetic(40, 30, interactions_per_user=6.0, modalities={"image": 8, "text": 4}, seed=1)
    cls = get_model("mvgae")
    # A narrower latent width than the reference's 128 keeps the test fast; the hook does not read it.
    model = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours, "latent_dim": 8}), rngs=nnx.Rngs(params=3))
    batch = jnp.asarray(np.stack([dataset.train[:24, 0], dataset.train[:24, 1], dataset.train[24:48, 1]]), jnp.int32)

    def losses(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        loss = jax.jit(lambda key: nnx.merge(graphdef, params, rest, copy=True).loss(batch, key))
        return [float(loss(jax.random.key(k))) for k in (1, 2)]

    noise = [np.asarray(model.reparameterisation_noise(jax.random.key(k))) for k in (1, 2)]
    assert not np.allclose(noise[0], noise[1])  # without the hook the noise comes from the key
    inv_count = np.asarray(model.graph.inv_count[...])
    parity.globals_hook(pmap.ours_hook)(model)
    fixed = losses(model)  # jitted through split / merge, as the trainer's steps use the model
    assert fixed[0] == fixed[1]
    d = model.config.embedding_size
    table = parity_maps._c_mvgae_noise(40 + 30, d)
    np.testing.assert_allclose(np.asarray(model.reparameterisation_noise(jax.random.key(4))), table, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.graph.inv_count[...]), inv_count, rtol=1e-6)

    ours = {k: np.asarray(v) for k, v in parity._flat(nnx.state(model, nnx.Param)).items()}
    back = parity.apply_map(pmap, parity.invert_map(pmap, ours), parity.our_param_shapes(model))
    assert set(back) == set(ours)
    constants = parity._flat(nnx.state(model, nnx.Not(nnx.Param)))
    assert constants["collab_gcn.features"].shape == (30, d) and constants["image_gcn.pref"].shape == (40, model.config.latent_dim)
    assert all(path in constants for path in pmap.constants.values())

