"""DA-MRS's parity data hook (``benchmarks/parity_maps.py``), on our side only: no torch, no reference.

The reference reads the item-item behaviour graph from ``item_graph_dict_2.npy`` in the data
folder (the authors' ``build_iib_graph.py`` output); ``damrs_item_graph_file`` writes it there
from our :func:`build_behaviour_graph`. Checked: the file is a pickled ``{item: [neighbours,
counts]}`` dict holding exactly our graph, and the model built on the folder is unchanged.
"""

from __future__ import annotations

import os

import numpy as np
from mirrorgrad_jax.models.damrs import build_behaviour_graph

from mirrorgrad_jax.data import load_mmrec, write_mmrec
from mirrorgrad_jax.data.synthetic import make_synthetic


def test_damrs_item_graph_file(parity_maps, tmp_path):
    dataset = make_synthetic(num_users=40, num_items=25, interactions_per_user=6.0, modalities={"image": 8, "text": 6}, seed=1, name="baby")
    folder = str(tmp_path / "baby")
    write_mmrec(dataset, folder)
    parity_maps.damrs_item_graph_file(folder)
    graph = np.load(os.path.join(folder, "item_graph_dict_2.npy"), allow_pickle=True).item()
    train = load_mmrec(folder, verbose=False).train
    rows, cols, counts = build_behaviour_graph(train, dataset.num_items, 2)
    written = sorted((i, j, w) for i, (js, ws) in graph.items() for j, w in zip(js, ws))
    assert written == sorted(zip(rows.tolist(), cols.tolist(), counts.tolist()))
    assert written, "the synthetic data should give a non-empty behaviour graph"
    assert all(len(js) == len(ws) <= 2 for js, ws in graph.values())
