"""Dataset names: what ``--dataset`` accepts and how each name is resolved.

``synthetic`` and ``synthetic-small`` are generated, ``movielens-100k`` is downloaded
and cached on first use, and any folder in the MMRec format is loaded as it is
(:func:`~mirrorgrad_jax.data.load_mmrec`). The command line, the demo and the benchmark
scripts all resolve names here.
"""

from __future__ import annotations

import os
import types
from typing import Mapping

from mirrorgrad_jax.data.dataset import DatasetError, RecDataset, load_mmrec
from mirrorgrad_jax.data.movielens import load_movielens_100k
from mirrorgrad_jax.data.synthetic import SYNTHETIC_DEFAULT, make_synthetic

__all__ = ["DATASETS", "load_dataset"]

#: Name -> one-line description (``<folder>`` stands for any MMRec folder).
DATASETS: Mapping[str, str] = types.MappingProxyType(
    {
        "synthetic": "built-in synthetic multimodal data (default; deterministic, no download)",
        "synthetic-small": "a tiny synthetic set for smoke tests",
        "movielens-100k": "MovieLens-100K with text (TF-IDF+SVD) and metadata features; downloaded and cached on first use",
        "<folder>": "any folder in the MMRec on-disk format (<name>.inter plus *_feat.npy), e.g. one made by `mirrorgrad prepare`",
    }
)


def load_dataset(name: str, *, verbose: bool = True) -> RecDataset:
    """Resolves a dataset name (see :data:`DATASETS`) or an MMRec-format folder.

    Raises:
      DatasetError: an unknown name that is not a folder either, or a folder that is not a valid dataset.
    """
    if name == "synthetic":
        return make_synthetic(**SYNTHETIC_DEFAULT)
    if name == "synthetic-small":
        return make_synthetic(num_users=200, num_items=120, seed=0, name="synthetic-small")
    if name in ("movielens-100k", "ml-100k"):
        return load_movielens_100k(verbose=verbose)
    if os.path.isdir(name):
        return load_mmrec(name, verbose=verbose)
    known = ", ".join(k for k in DATASETS if not k.startswith("<"))
    raise DatasetError(f"unknown dataset {name!r}: use one of {known} or an MMRec folder")
