"""DualGNN's parity map (``benchmarks/parity_maps.py``) on a stand-in, without torch.

The real check exports the reference's user-graph sample of the epoch (``topk_sample``: 40
neighbours per user, random padding, softmax weights) and loads it in place of ours, and
recomputes our GCN edge weights in float64 (the reference computes them in the dtype of its
messages). Here a made-up "reference" sample (one of our own draws from another generator)
must replace ours exactly, the widened edge weights must be the float32 ones to rounding,
and the loss must then be the loss with that sample.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_exported_sample_and_wide_edge_norm(parity):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.data.synthetic import make_synthetic

    pmap = parity.PARITY_MAPS["dualgnn"]
    dataset = make_synthetic(40, 30, interactions_per_user=6.0, modalities={"image": 8, "text": 4}, seed=1)
    cls = get_model("dualgnn")
    config = build_config(cls, {**pmap.settings, **pmap.ours})
    donor = cls(dataset, config, rngs=nnx.Rngs(params=3))
    donor.pre_epoch(np.random.default_rng(123))  # the stand-in for the reference's sample
    sample = {"user_nbr_idx": np.asarray(donor.user_nbr_idx[...]), "user_nbr_weights": np.asarray(donor.user_nbr_weights[...])}
    init = parity.invert_map(pmap, {k: np.asarray(v) for k, v in parity._flat(nnx.state(donor, nnx.Param)).items()})
    for key, path in pmap.constants.items():
        init[key] = sample[path].astype(np.float64) if path == "user_nbr_weights" else sample[path]
    float32_norm = np.asarray(donor.edge_norm[...])

    batch = np.stack([dataset.train[:8, 0], dataset.train[:8, 1], np.arange(8) % dataset.num_items]).astype(np.int32)
    with jax.enable_x64(True):
        ours = parity.build_ours("dualgnn", pmap, dataset, init, float64=True)
        for path, value in sample.items():
            np.testing.assert_array_equal(np.asarray(getattr(ours, path)[...]), value)
        wide = np.asarray(ours.edge_norm[...])
        assert wide.dtype == np.float64
        np.testing.assert_allclose(wide, float32_norm, rtol=1e-7)
        assert not np.array_equal(wide, float32_norm.astype(np.float64))  # recomputed, not just widened
        ours_loss = float(ours.loss(jnp.asarray(batch), None))
    assert ours_loss == pytest.approx(float(donor.loss(jnp.asarray(batch), None)), rel=1e-5)

    # Without float64 the hook keeps our dtype.
    narrow = parity.build_ours("dualgnn", pmap, dataset, init, float64=False)
    assert np.asarray(narrow.edge_norm[...]).dtype == np.float32
    np.testing.assert_allclose(np.asarray(narrow.edge_norm[...]), float32_norm, rtol=1e-6)
