"""A synthetic catalogue with the shapes of real ones, for measuring scale without downloads.

``make_large(scale=1)`` has the shapes of MMRec's Amazon Electronics: 192,403 users,
63,001 items, about 1.69M interactions (8.8 per user, at least 5), image features of 4096
and text features of 384 dimensions (float32: 1.03 GB + 0.10 GB). ``scale`` multiplies
users, items and interactions (``scale=10``: 1.9M users, 630k items, 17M interactions and
11.3 GB of features). Feature dimensions never scale. User and item counts are rounded UP
to a multiple of 64 (192,448 and 63,040 at scale 1), so that tables can be row-sharded
over any power-of-two mesh up to 64 devices: JAX shards only evenly, and a table whose
rows do not divide stays replicated (see :mod:`mirrorgrad_jax.devices`).

Unlike :func:`~mirrorgrad_jax.data.make_synthetic` (which scores every user against
every item, quadratic), everything here is linear in the interactions, vectorised
numpy, and deterministic in ``seed``:

1. items fall into ``num_clusters`` taste clusters and get a Zipf-like popularity
   (exponent 0.8) over a random ranking; users get one favourite cluster each;
2. each user draws ``5 + Geometric`` items (mean 8.8), each from the favourite cluster
   with probability ``personal`` (by popularity within the cluster), else from the whole
   catalogue by popularity; repeats are dropped; items nobody drew are given to a random
   user, so that every id is used;
3. the reference's per-user split (:func:`~mirrorgrad_jax.data.per_user_split`);
4. each modality is a random projection of the item's cluster centroid plus noise, so
   features carry the cluster signal.

Electronics-size generation takes 12-30 s on a 2-core CPU and 2.9 GB of memory at its peak
(measured 2026-12-08: 0.5 GB without features, so about 2.1 bytes per byte of the 1.13 GB of
float32 features). :func:`large_shape` gives a scale's sizes and that estimate without
building anything, and :func:`make_large` refuses a scale whose estimate exceeds the memory
available (``scale=10`` needs about 27 GB with its features, 3.5 GB without).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from mirrorgrad_jax.data.dataset import RecDataset
from mirrorgrad_jax.data.splits import per_user_split

__all__ = ["ELECTRONICS_SHAPE", "LargeShape", "large_shape", "make_large"]

#: MMRec Amazon Electronics: users, items, interactions, feature dimensions.
ELECTRONICS_SHAPE: Mapping[str, object] = {
    "num_users": 192_403,
    "num_items": 63_001,
    "interactions": 1_689_188,
    "modalities": {"image": 4096, "text": 384},
}

_MIN_PER_USER = 5
#: User and item counts are rounded up to a multiple of this (even shards up to 64 devices).
ROW_MULTIPLE = 64
# Feature rows generated at a time: bounds the float32 temporaries to ~64 MB.
_FEATURE_ROWS = 4096


#: Measured peak bytes of building: per float32 feature byte, and per unit of scale for the
#: interactions and their split (2026-12-08, scale 1: 2.88 GB with features, 0.50 GB without).
_PEAK_PER_FEATURE_BYTE = 2.1
_PEAK_PER_SCALE = 0.33e9


@dataclass(frozen=True)
class LargeShape:
    """The sizes :func:`make_large` gives a scale, known before anything is built.

    Attributes:
      num_users: users (rounded up to a multiple of 64).
      num_items: items (rounded up to a multiple of 64).
      interactions: the expected interaction count: Electronics' mean per user (plus the
        1% drawn over it) times the users (the built set lands within about 1% of it).
      modalities: modality -> feature dimension.
      feature_bytes: bytes of the float32 feature tables.
      build_bytes: the estimated peak memory of building it (measured factors, above).
    """

    num_users: int
    num_items: int
    interactions: int
    modalities: Mapping[str, int]
    feature_bytes: int
    build_bytes: int

    def summary(self, name: str) -> str:
        """What ``mirrorgrad datasets NAME`` prints for a generated large set (nothing is built)."""
        features = ", ".join(f"{m} {self.num_items}x{d}" for m, d in self.modalities.items()) or "none"
        available = available_memory()
        here = f", {_gb(available)} available here" if available is not None else ""
        if available is not None and self.build_bytes > available:
            here += ": more than there is, so a command that uses it refuses it"
        return "\n".join(
            [
                f"dataset {name}: {self.num_users} users, {self.num_items} items, about {self.interactions} interactions "
                "(generated when a command uses it; not built to describe it)",
                f"  features: {features} ({_gb(self.feature_bytes)} float32)",
                f"  building it needs about {_gb(self.build_bytes)} of memory{here}",
            ]
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def large_shape(scale: float = 1.0, modalities: Mapping[str, int] | None = None) -> LargeShape:
    """The sizes and memory estimate of ``make_large(scale, modalities=modalities)``, without building it.

    Raises:
      ValueError: a scale that is not a finite number > 0, or so small that fewer than
        100 users or items would remain.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    num_users = -(-round(ELECTRONICS_SHAPE["num_users"] * scale) // ROW_MULTIPLE) * ROW_MULTIPLE
    num_items = -(-round(ELECTRONICS_SHAPE["num_items"] * scale) // ROW_MULTIPLE) * ROW_MULTIPLE
    if num_items < 100 or num_users < 100:
        raise ValueError(f"scale={scale} leaves {num_users} users and {num_items} items; use scale >= {100 / ELECTRONICS_SHAPE['num_items']:.4f}")
    dims = {m: int(d) for m, d in (ELECTRONICS_SHAPE["modalities"] if modalities is None else modalities).items()}
    feature_bytes = 4 * num_items * sum(dims.values())
    build = int(_PEAK_PER_FEATURE_BYTE * feature_bytes + _PEAK_PER_SCALE * scale)
    interactions = round(1.01 * ELECTRONICS_SHAPE["interactions"] / ELECTRONICS_SHAPE["num_users"] * num_users)  # the draw's mean, below
    return LargeShape(num_users, num_items, interactions, dims, feature_bytes, build)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), else the physical memory, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _draw(cum: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item positions drawn by popularity inside ``[low, high)`` of the cumulative weights ``cum``."""
    u = rng.random(low.shape)
    start = np.where(low > 0, cum[np.maximum(low - 1, 0)], 0.0)
    target = start + u * (cum[high - 1] - start)
    return np.minimum(np.searchsorted(cum, target, side="right"), high - 1)


def _interactions(
    num_users: int, num_items: int, per_user: float, num_clusters: int, personal: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 2)`` distinct (user, item) pairs (every user with at least ``_MIN_PER_USER``, every item used) and each item's cluster."""
    cluster_of_item = rng.integers(0, num_clusters, num_items)
    popularity = (1.0 + rng.permutation(num_items)) ** -0.8
    # Items in cluster order: a cluster is a contiguous slice of the cumulative weights.
    order = np.argsort(cluster_of_item, kind="stable")
    cum = np.cumsum(popularity[order])
    bounds = np.searchsorted(cluster_of_item[order], np.arange(num_clusters + 1))
    favourite = rng.integers(0, num_clusters, num_users)

    extra = rng.geometric(1.0 / (per_user - _MIN_PER_USER + 1.0), num_users) - 1
    counts = np.minimum(_MIN_PER_USER + extra, num_items // 2)
    # Draw twice what is needed, so that dropping repeats (common in small clusters) still leaves enough.
    draws = counts + np.maximum(_MIN_PER_USER, counts)
    users = np.repeat(np.arange(num_users), draws)
    personal_draw = rng.random(users.size) < personal
    low = np.where(personal_draw, bounds[favourite[users]], 0)
    high = np.where(personal_draw, bounds[favourite[users] + 1], num_items)
    empty = high <= low  # a cluster without items: draw from the whole catalogue
    low, high = np.where(empty, 0, low), np.where(empty, num_items, high)
    items = order[_draw(cum, low, high, rng)]

    keys = users.astype(np.int64) * num_items + items
    _, first = np.unique(keys, return_index=True)
    first.sort()  # distinct pairs in draw order, still grouped by user
    users, items = users[first], items[first]
    starts = np.searchsorted(users, np.arange(num_users))
    rank = np.arange(users.size) - starts[users]
    keep = rank < counts[users]
    users, items = users[keep], items[keep]
    short = np.flatnonzero(np.bincount(users, minlength=num_users) < _MIN_PER_USER)
    if short.size:  # vanishingly rare: top these users up with their first unused item ids
        extra_pairs = []
        for user in short:
            have = set(items[users == user].tolist())
            fill = [i for i in range(num_items) if i not in have][: _MIN_PER_USER - len(have)]
            extra_pairs += [(user, i) for i in fill]
        more = np.asarray(extra_pairs, np.int64)
        users, items = np.concatenate([users, more[:, 0]]), np.concatenate([items, more[:, 1]])
    unused = np.flatnonzero(np.bincount(items, minlength=num_items) == 0)
    if unused.size:
        users = np.concatenate([users, rng.integers(0, num_users, unused.size)])
        items = np.concatenate([items, unused])
    return np.stack([users, items], axis=1).astype(np.int64), cluster_of_item


def _features(cluster_of_item: np.ndarray, dims: int, centroids: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """float32 ``(items, dims)``: the cluster centroid projected to ``dims``, plus Gaussian noise."""
    projection = (rng.standard_normal((centroids.shape[1], dims)) / math.sqrt(centroids.shape[1])).astype(np.float32)
    signal = centroids.astype(np.float32) @ projection  # (clusters, dims)
    out = np.empty((cluster_of_item.size, dims), np.float32)
    for start in range(0, cluster_of_item.size, _FEATURE_ROWS):
        stop = min(start + _FEATURE_ROWS, cluster_of_item.size)
        block = rng.standard_normal((stop - start, dims), dtype=np.float32)
        block *= noise
        block += signal[cluster_of_item[start:stop]]
        out[start:stop] = block
    return out


def make_large(
    scale: float = 1.0,
    *,
    modalities: Mapping[str, int] | None = None,
    num_clusters: int | None = None,
    personal: float = 0.6,
    feature_noise: float = 1.0,
    seed: int = 0,
    name: str | None = None,
) -> RecDataset:
    """An Electronics-shaped synthetic dataset, ``scale`` times as big (see the module docstring).

    Args:
      scale: multiplies users, items and interactions (1: Electronics; 10: ten times it);
        user and item counts are then rounded up to a multiple of :data:`ROW_MULTIPLE`.
      modalities: modality -> dimension; default ``{"image": 4096, "text": 384}``;
        ``{}`` for none (ID-only models at sizes whose features would not fit).
      num_clusters: taste clusters; default ``sqrt(items)``, about 250 items each.
      personal: share of a user's draws from the favourite cluster.
      feature_noise: std of the noise added to the unit-variance cluster signal.
      seed: the dataset is a pure function of its arguments.
      name: dataset name; default ``large`` (``large:scale=S`` for other scales).

    Raises:
      ValueError: a scale so small that fewer than 100 items would remain, or one whose
        build would need more memory than is available (:func:`large_shape`'s estimate
        against :func:`available_memory`), said before anything is allocated.
    """
    shape = large_shape(scale, modalities)
    num_users, num_items, modalities = shape.num_users, shape.num_items, dict(shape.modalities)
    label = name or ("large" if scale == 1 else f"large:scale={scale:g}")
    available = available_memory()
    if available is not None and shape.build_bytes > available:
        smaller = ", or no features (make_large(scale, modalities={}), as benchmarks/scaling.py builds large-10x)" if shape.feature_bytes else ""
        raise ValueError(f"{label} needs about {_gb(shape.build_bytes)} of memory to build and {_gb(available)} is available here: use a smaller scale{smaller}")
    # 1% over Electronics' mean: dropping repeated draws costs about half a percent.
    per_user = 1.01 * ELECTRONICS_SHAPE["interactions"] / ELECTRONICS_SHAPE["num_users"]
    clusters = num_clusters or max(2, int(round(math.sqrt(num_items))))
    rng = np.random.default_rng(seed)
    pairs, cluster_of_item = _interactions(num_users, num_items, per_user, clusters, personal, rng)
    train, valid, test = per_user_split(pairs, rng)
    centroids = rng.standard_normal((clusters, 16))
    features = {m: _features(cluster_of_item, int(d), centroids, feature_noise, rng) for m, d in modalities.items()}
    return RecDataset.from_arrays(label, train, valid, test, features, num_users=num_users, num_items=num_items, verbose=False)
