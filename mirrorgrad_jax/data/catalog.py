"""Dataset names: what ``--dataset`` accepts and how each name is resolved.

``synthetic`` and ``synthetic-small`` are generated, ``large`` (Electronics-sized,
:func:`~mirrorgrad_jax.data.make_large`), ``large-10x`` and ``large:scale=S`` are
generated at the shapes of real catalogues, ``movielens-100k`` is downloaded
and cached on first use, and any folder in the MMRec format is loaded as it is
(:func:`~mirrorgrad_jax.data.load_mmrec`). The command line, the demo and the benchmark
scripts all resolve names here.
"""

from __future__ import annotations

import math

import os
import types
from typing import Mapping

from mirrorgrad_jax.data.dataset import DatasetError, RecDataset, with_source
from mirrorgrad_jax.data.mmrec import load_mmrec
from mirrorgrad_jax.data.large import large_shape, make_large
from mirrorgrad_jax.data.movielens import load_movielens_100k
from mirrorgrad_jax.data.synthetic import SYNTHETIC_DEFAULT, make_synthetic

__all__ = ["DATASETS", "describe_dataset", "is_dataset", "load_dataset"]

#: Name -> one-line description (``<folder>`` stands for any MMRec folder).
DATASETS: Mapping[str, str] = types.MappingProxyType(
    {
        "synthetic": "built-in synthetic multimodal data (default; deterministic, no download)",
        "synthetic-small": "a tiny synthetic set for smoke tests",
        "large": "synthetic at Amazon Electronics' shapes: 192k users, 63k items (rounded up to multiples of 64), 1.7M interactions, image 4096-d + text 384-d (1.1 GB of features)",
        "large-10x": "ten times `large` (1.9M users, 630k items, 17M interactions, 11.3 GB of features); `large:scale=S` for any S",
        "movielens-100k": "MovieLens-100K with text (TF-IDF+SVD) and metadata features; downloaded and cached on first use",
        "<folder>": "any folder in the MMRec on-disk format (<name>.inter plus *_feat.npy), e.g. one made by `mirrorgrad prepare`",
    }
)


def load_dataset(name: str, *, verbose: bool = True) -> RecDataset:
    """Resolves a dataset name (see :data:`DATASETS`) or an MMRec-format folder.

    The dataset's :attr:`~mirrorgrad_jax.data.RecDataset.source` says where it came from:
    the name for a built-in set, the folder's absolute path for a folder (a built-in name
    wins over a folder of the same name in the working directory).

    Raises:
      DatasetError: an unknown name that is not a folder either, or a folder that is not a valid dataset.
    """
    if os.path.isdir(name) and not _is_builtin(name):
        return load_mmrec(name, verbose=verbose)
    return with_source(_builtin(name, verbose), name)


def describe_dataset(name: str) -> str:
    """What ``mirrorgrad datasets NAME`` prints: :meth:`RecDataset.summary`, except for the
    generated large sets, which are described from their shapes without being built
    (``large-10x`` holds 11.3 GB of features).

    Raises:
      DatasetError: as :func:`load_dataset`.
    """
    scale = _large_scale(name)
    if scale is not None:  # a built-in name: it wins over a folder of that name
        try:
            return large_shape(scale).summary(name)
        except ValueError as err:
            raise DatasetError(f"dataset {name!r}: {err}") from None
    return load_dataset(name).summary()


def is_dataset(name: str) -> bool:
    """Whether :func:`load_dataset` would look ``name`` up: a built-in name or an existing folder (nothing is loaded)."""
    return (_is_builtin(name) and name != "<folder>") or os.path.isdir(name)


def _is_builtin(name: str) -> bool:
    return name in DATASETS or name == "ml-100k" or name.startswith("large:")


def _builtin(name: str, verbose: bool) -> RecDataset:
    """A built-in dataset by name.

    Raises:
      DatasetError: an unknown name.
    """
    if name == "synthetic":
        return make_synthetic(**SYNTHETIC_DEFAULT)
    if name == "synthetic-small":
        return make_synthetic(num_users=200, num_items=120, seed=0, name="synthetic-small")
    scale = _large_scale(name)
    if scale is not None:
        try:
            return make_large(scale)
        except ValueError as err:
            raise DatasetError(f"dataset {name!r}: {err}") from None
    if name in ("movielens-100k", "ml-100k"):
        return load_movielens_100k(verbose=verbose)
    known = ", ".join(k for k in DATASETS if not k.startswith("<"))
    raise DatasetError(f"unknown dataset {name!r}: use one of {known} or an MMRec folder")


#: The generated large sets' fixed names and their scales.
_LARGE_NAMES = {"large": 1.0, "large-10x": 10.0}


def _large_scale(name: str) -> float | None:
    """The scale of a generated large set's name: ``"large"`` -> 1, ``"large-10x"`` -> 10,
    ``"large:scale=2.5"`` -> 2.5; ``None`` for any other name.

    Raises:
      DatasetError: anything else after ``large:``.
    """
    if name in _LARGE_NAMES:
        return _LARGE_NAMES[name]
    if not name.startswith("large:"):
        return None
    key, _, value = name[len("large:") :].partition("=")
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if key.strip() != "scale" or not (scale > 0 and math.isfinite(scale)):
        raise DatasetError(f"dataset {name!r}: expected large:scale=S with S > 0 (e.g. large:scale=0.1)")
    return scale
