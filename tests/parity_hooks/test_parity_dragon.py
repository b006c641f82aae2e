"""DRAGON's parity map and our-side hook (``benchmarks/parity_maps.py``), without torch or a reference checkout.

The hook recomputes in float64 the two constants our model builds in float32 (the GCN edge
weights and the ``mm_adj`` values); checked here: it changes only their rounding (same
formulas, same neighbour lists), and the map covers every parameter of ours.
"""

from __future__ import annotations

import numpy as np
from flax import nnx


def test_wide_constants_hook_and_map(parity):
    from mirrorgrad_jax.models import build_config, get_model

    from mirrorgrad_jax.data.synthetic import make_synthetic

    pmap = parity.PARITY_MAPS["dragon"]
    dataset = make_synthetic(40, 30, interactions_per_user=6.0, modalities={"image": 8, "text": 4}, seed=1)
    cls = get_model("dragon")
    model = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours}), rngs=nnx.Rngs(params=3))
    before = {name: np.asarray(getattr(model, name)[...]) for name in ("edge_norm", "mm_val", "mm_idx")}
    parity.globals_hook(pmap.ours_hook)(model)
    after = {name: np.asarray(getattr(model, name)[...]) for name in ("edge_norm", "mm_val", "mm_idx")}
    np.testing.assert_array_equal(after["mm_idx"], before["mm_idx"])
    np.testing.assert_allclose(after["edge_norm"], before["edge_norm"], rtol=1e-6)
    np.testing.assert_allclose(after["mm_val"], before["mm_val"], rtol=1e-6)
    k = model.config.knn_k
    assert np.allclose(after["mm_val"][:, :k], 0.1 / (k + 1e-7)) and np.allclose(after["mm_val"][:, k:], 0.9 / (k + 1e-7))

    ours = {k: np.asarray(v) for k, v in parity._flat(nnx.state(model, nnx.Param)).items()}
    back = parity.apply_map(pmap, parity.invert_map(pmap, ours), parity.our_param_shapes(model))
    assert set(back) == set(ours)
    constants = parity._flat(nnx.state(model, nnx.Not(nnx.Param)))
    assert {path: constants[path].shape for path in pmap.constants.values()} == {
        "user_nbr_idx": (40, model.config.num_user_neighbours),
        "user_nbr_weights": (40, model.config.num_user_neighbours),
    }
