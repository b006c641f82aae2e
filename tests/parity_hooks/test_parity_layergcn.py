"""LayerGCN's parity map (``benchmarks/parity_maps.py``) on a stand-in, without torch.

The real check exports the reference's pruned training graph (its ``torch.multinomial``
sample of the epoch) and loads it in place of ours; here a made-up "reference" sample (one
of our own draws from another generator) must replace our model's sample exactly, in
float64, and the loss must then be the loss on that graph.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_exported_sample_replaces_ours(parity):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.data.synthetic import make_synthetic

    pmap = parity.PARITY_MAPS["layergcn"]
    assert pmap.settings["dropout"] > 0  # the pruned graph is what the check exercises
    dataset = make_synthetic(40, 30, interactions_per_user=6.0, seed=1)
    cls = get_model("layergcn")
    donor = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=3))
    donor.pre_epoch(np.random.default_rng(123))  # the stand-in for the reference's sample
    sample = {name: np.asarray(getattr(donor, name)[...]) for name in ("masked_rows", "masked_cols", "masked_values")}
    init = parity.invert_map(pmap, {k: np.asarray(v) for k, v in parity._flat(nnx.state(donor, nnx.Param)).items()})
    for key, path in pmap.constants.items():
        init[key] = sample[path].astype(np.float64) if path == "masked_values" else sample[path]

    with jax.enable_x64(True):
        ours = parity.build_ours("layergcn", pmap, dataset, init, float64=True)
        for path, value in sample.items():
            got = np.asarray(getattr(ours, path)[...])
            np.testing.assert_array_equal(got, value)
            if path == "masked_values":
                assert got.dtype == np.float64
        batch = jnp.asarray(np.stack([dataset.train[:8, 0], dataset.train[:8, 1], np.arange(8) % dataset.num_items]).astype(np.int32))
        ours_loss = float(ours.loss(batch, None))
    donor_loss = float(donor.loss(batch, None))
    assert ours_loss == pytest.approx(donor_loss, rel=1e-5)
    # Our own draw (before the constants are loaded) is another graph: the load is what made them equal.
    other = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=3))
    other.pre_epoch(np.random.default_rng(parity.SEED))
    assert not np.array_equal(np.asarray(other.masked_cols[...]), sample["masked_cols"])
