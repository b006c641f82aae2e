"""Seeded, pure perturbations of item features: the paper's two kinds of feature change.

Mirror Gradient is motivated by recommendations that must stay stable when item
features change after training: *inherent noise* (feature extractors, crawled images,
machine-translated text) and *information adjustment* (sellers re-editing a listing).
This module produces such changed features so that a trained model can be re-scored
on them (:mod:`mirrorgrad_jax.analysis.robustness`).

Every function takes a mapping ``{modality: (num_items, D) float32 array}``, never
changes it, and returns a :class:`PerturbResult` with fresh arrays for EVERY modality
(untouched rows and modalities are bit-identical copies) plus the affected item ids.
All randomness comes from the ``rng`` argument (a ``numpy.random.Generator`` or an int
seed), so one seed gives one perturbation.

* :func:`gaussian_noise`: inherent noise, ``N(0, (sigma * std_d)^2)`` per dimension.
* :func:`swap_with_random_items`: adjustment (a), a listing shows another item's content.
* :func:`campaign_shift`: adjustment (b), one shared "banner" direction added to items.
* :func:`missing_modality`: a modality is missing for some items (zero or mean fill).
* :func:`shuffle_items`: a modality shuffled among items: every affected item shows a
  different affected item's row, each row used once (a derangement).
* :func:`apply_perturbation`: one of the above by name (``kind``) and ``level``, on a whole
  :class:`~mirrorgrad_jax.data.RecDataset`; :func:`check_level` checks a level before.

Every shift of the robustness study is one ``(kind, level)``:

* Gaussian noise of any strength: ``("noise", sigma)``;
* a campaign of fixed size (:data:`CAMPAIGN_MAGNITUDE`) on a growing share of items:
  ``("campaign-items", share)``; a growing campaign on :data:`CAMPAIGN_FRACTION` of them:
  ``("campaign", magnitude)``;
* a modality replaced at inference, for every item (level 1) or a share of them, by
  zeros ``("missing", 1.0)``, by its mean vector ``("missing-mean", 1.0)``, or by another
  item's vector: ``("shuffle", 1.0)`` (a permutation without fixed points, so the set of
  rows is kept) or ``("swap", 1.0)`` (sources drawn with replacement: some rows appear
  several times, others vanish).

Example::

    noisy = gaussian_noise(ds.features, sigma=0.5, rng=0)
    shifted_ds = apply_perturbation(ds, "campaign", 1.0, seed=0, modality="image")
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mirrorgrad_jax.data import RecDataset

__all__ = [
    "CAMPAIGN_FRACTION",
    "CAMPAIGN_MAGNITUDE",
    "FRACTION_KINDS",
    "PERTURBATIONS",
    "PerturbResult",
    "apply_perturbation",
    "campaign_shift",
    "check_level",
    "gaussian_noise",
    "missing_modality",
    "shuffle_items",
    "swap_with_random_items",
]

#: Share of items a ``"campaign"`` adjusts in :func:`apply_perturbation` (its level is the magnitude).
CAMPAIGN_FRACTION = 0.2

#: Size of the shift of a ``"campaign-items"`` in :func:`apply_perturbation` (its level is the
#: share of items), in units of the mean feature-row norm: a banner as long as the average row.
CAMPAIGN_MAGNITUDE = 1.0

#: What ``level`` means for each ``kind`` of :func:`apply_perturbation`.
PERTURBATIONS: Mapping[str, str] = {
    "noise": "sigma: Gaussian noise std in units of each feature dimension's std, on every item",
    "swap": "fraction of items whose features are replaced by another random item's (sources drawn with replacement)",
    "campaign": f"magnitude of a shared shift, in units of the mean feature-row norm, on {CAMPAIGN_FRACTION:.0%} of items",
    "missing": "fraction of items whose features are missing (zero-filled)",
    "campaign-items": f"fraction of items given a shared shift of {CAMPAIGN_MAGNITUDE:g} mean feature-row norm",
    "missing-mean": "fraction of items whose features are missing (filled with the mean of the items that keep theirs)",
    "shuffle": "fraction of items whose features are shuffled among themselves, none keeping its own row",
}

#: The kinds whose level is a fraction of items, in [0, 1]; the others take any finite level >= 0.
FRACTION_KINDS = ("swap", "missing", "campaign-items", "missing-mean", "shuffle")

Features = Mapping[str, np.ndarray]
RngLike = np.random.Generator | int


@dataclasses.dataclass(frozen=True)
class PerturbResult:
    """The outcome of one perturbation.

    Attributes:
      features: modality -> perturbed ``(num_items, D)`` float32 array (new arrays for
        every modality; rows and modalities that were not perturbed are bit-identical
        to the input).
      items: sorted int64 ids of the affected items.
      modalities: the modalities that were perturbed.
      sources: for :func:`swap_with_random_items`, the item whose row each entry of
        ``items`` received (aligned with ``items``); ``None`` otherwise.
    """

    features: dict[str, np.ndarray]
    items: np.ndarray
    modalities: tuple[str, ...]
    sources: np.ndarray | None = None


# ---------------------------------------------------------------------------------------
# Validation shared by the perturbations.
# ---------------------------------------------------------------------------------------


def _copy_features(features: Features) -> tuple[dict[str, np.ndarray], int]:
    """Float32 copies of all modalities and the common number of items; validates shapes."""
    if not isinstance(features, Mapping) or not features:
        raise ValueError("features must be a non-empty mapping modality -> (num_items, D) array")
    copies: dict[str, np.ndarray] = {}
    num_items = None
    for modality, values in features.items():
        arr = np.array(values, dtype=np.float32, copy=True)
        if arr.ndim != 2:
            raise ValueError(f"features[{modality!r}] must be a 2-D (items, dims) array, got shape {arr.shape}")
        if num_items is None:
            num_items = arr.shape[0]
        elif arr.shape[0] != num_items:
            raise ValueError(
                f"features[{modality!r}] has {arr.shape[0]} rows but another modality has {num_items}; "
                "every modality needs one row per item"
            )
        copies[modality] = arr
    return copies, int(num_items)


def _check_modalities(features: Features, modality: str | Sequence[str] | None) -> tuple[str, ...]:
    """The requested modalities as a tuple; ``None`` means all, in mapping order."""
    if modality is None:
        return tuple(features)
    names = (modality,) if isinstance(modality, str) else tuple(modality)
    if not names:
        raise ValueError(f"no modality given; available: {', '.join(map(repr, features))}")
    for name in names:
        if name not in features:
            raise ValueError(f"unknown modality {name!r}; available: {', '.join(map(repr, features))}")
    if len(set(names)) != len(names):
        raise ValueError(f"modalities listed twice in {names}")
    return names


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return fraction


def _choose_items(num_items: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``round(fraction * num_items)`` distinct item ids, sorted."""
    count = int(round(fraction * num_items))
    if count == num_items:
        return np.arange(num_items, dtype=np.int64)
    return np.sort(rng.choice(num_items, size=count, replace=False)).astype(np.int64)


# ---------------------------------------------------------------------------------------
# The perturbations.
# ---------------------------------------------------------------------------------------


def gaussian_noise(
    features: Features,
    sigma: float,
    *,
    modalities: str | Sequence[str] | None = None,
    fraction: float = 1.0,
    rng: RngLike,
) -> PerturbResult:
    """Inherent noise: additive Gaussian noise scaled to each feature dimension's spread.

    Row ``i`` of an affected item gets ``x_i + e_i`` with ``e_id ~ N(0, (sigma * std_d)^2)``
    independently, where ``std_d`` is the standard deviation of dimension ``d`` over all
    items of that modality (computed on the input). A constant dimension stays constant.

    Args:
      features: modality -> ``(num_items, D)`` array.
      sigma: noise scale in units of ``std_d`` (>= 0; 0 returns copies of the input).
      modalities: one modality, several, or ``None`` for all.
      fraction: share of items that get noise; the same items in every modality.
      rng: generator or seed. Items are drawn first, then the noise modality by modality.

    Returns:
      A :class:`PerturbResult`.

    Raises:
      ValueError: negative ``sigma``, ``fraction`` outside [0, 1], unknown modality.
    """
    sigma = float(sigma)
    if not sigma >= 0.0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    fraction = _check_fraction(fraction)
    names = _check_modalities(features, modalities)
    out, num_items = _copy_features(features)
    rng = np.random.default_rng(rng)
    items = _choose_items(num_items, fraction, rng)
    for name in names:
        arr = out[name]
        std = arr.astype(np.float64).std(axis=0)
        noise = rng.standard_normal((len(items), arr.shape[1])) * (sigma * std)
        arr[items] = (arr[items] + noise).astype(np.float32)
    return PerturbResult(out, items, names)


def swap_with_random_items(
    features: Features,
    modality: str | Sequence[str],
    fraction: float,
    *,
    rng: RngLike,
) -> PerturbResult:
    """Adjustment (a): an item's features are replaced by those of another random item.

    Each affected item ``i`` receives the ORIGINAL row of a source item drawn uniformly
    from the other ``num_items - 1`` items (never ``i`` itself; several items may share
    a source, and a source may itself be affected). With several modalities, an item
    takes all of them from the same source (a copied listing).

    Args:
      features: modality -> ``(num_items, D)`` array.
      modality: the modality (or modalities) replaced.
      fraction: share of items affected, in [0, 1].
      rng: generator or seed.

    Returns:
      A :class:`PerturbResult` whose ``sources`` holds each affected item's source.

    Raises:
      ValueError: unknown modality, ``fraction`` outside [0, 1], or a single item.
    """
    fraction = _check_fraction(fraction)
    names = _check_modalities(features, modality)
    out, num_items = _copy_features(features)
    rng = np.random.default_rng(rng)
    items = _choose_items(num_items, fraction, rng)
    if len(items) and num_items < 2:
        raise ValueError("swapping needs at least two items")
    # Uniform over the other items: draw from num_items - 1 ids and skip over i itself.
    sources = rng.integers(0, max(num_items - 1, 1), size=len(items)).astype(np.int64)
    sources += sources >= items
    for name in names:
        out[name][items] = np.asarray(features[name], dtype=np.float32)[sources]
    return PerturbResult(out, items, names, sources)


def campaign_shift(
    features: Features,
    modality: str | Sequence[str],
    fraction: float,
    magnitude: float,
    *,
    rng: RngLike,
) -> PerturbResult:
    """Adjustment (b): a campaign adds the same banner-like shift to many items.

    One unit direction ``u`` is drawn per modality (uniform on the sphere) and every
    affected item gets ``x_i + magnitude * mean_j ||x_j|| * u``, where the mean row L2
    norm is taken over all items of the modality (on the input).

    Args:
      features: modality -> ``(num_items, D)`` array.
      modality: the modality (or modalities) shifted.
      fraction: share of items adjusted, in [0, 1].
      magnitude: shift length in units of the mean row norm (>= 0).
      rng: generator or seed. Items are drawn first, then one direction per modality.

    Returns:
      A :class:`PerturbResult`.

    Raises:
      ValueError: unknown modality, ``fraction`` outside [0, 1], negative ``magnitude``.
    """
    fraction = _check_fraction(fraction)
    magnitude = float(magnitude)
    if not magnitude >= 0.0:
        raise ValueError(f"magnitude must be >= 0, got {magnitude}")
    names = _check_modalities(features, modality)
    out, num_items = _copy_features(features)
    rng = np.random.default_rng(rng)
    items = _choose_items(num_items, fraction, rng)
    for name in names:
        arr = out[name]
        direction = rng.standard_normal(arr.shape[1])
        direction /= max(np.linalg.norm(direction), np.finfo(np.float64).tiny)
        mean_norm = np.linalg.norm(arr.astype(np.float64), axis=1).mean()
        shift = magnitude * mean_norm * direction
        arr[items] = (arr[items] + shift).astype(np.float32)
    return PerturbResult(out, items, names)


def missing_modality(
    features: Features,
    modality: str | Sequence[str],
    fraction: float,
    *,
    fill: str = "zero",
    rng: RngLike,
) -> PerturbResult:
    """A modality is missing for some items and is filled in.

    Args:
      features: modality -> ``(num_items, D)`` array.
      modality: the modality (or modalities) that go missing.
      fraction: share of items affected, in [0, 1]; the same items in every modality.
      fill: ``"zero"`` (rows set to 0) or ``"mean"`` (rows set to the per-dimension mean
        of the items that keep their features, i.e. what an imputer would see; the mean
        over all items when every item is affected).
      rng: generator or seed.

    Returns:
      A :class:`PerturbResult`.

    Raises:
      ValueError: unknown modality or fill, ``fraction`` outside [0, 1].
    """
    fraction = _check_fraction(fraction)
    if fill not in ("zero", "mean"):
        raise ValueError(f"fill must be 'zero' or 'mean', got {fill!r}")
    names = _check_modalities(features, modality)
    out, num_items = _copy_features(features)
    rng = np.random.default_rng(rng)
    items = _choose_items(num_items, fraction, rng)
    kept = np.ones(num_items, dtype=bool)
    kept[items] = False
    for name in names:
        arr = out[name]
        if fill == "zero":
            arr[items] = 0.0
        else:
            observed = arr[kept] if kept.any() else arr
            arr[items] = observed.astype(np.float64).mean(axis=0).astype(np.float32)
    return PerturbResult(out, items, names)


def _derangement(count: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(count)`` without fixed points (``count`` != 1).

    Rejection sampling: a random permutation has no fixed point with probability close to
    ``1/e``, so about e draws are needed on average, whatever ``count`` is.
    """
    positions = np.arange(count)
    while True:
        order = rng.permutation(count)
        if not np.any(order == positions):
            return order


def shuffle_items(
    features: Features,
    modality: str | Sequence[str],
    fraction: float,
    *,
    rng: RngLike,
) -> PerturbResult:
    """A modality shuffled among items: each affected item shows a DIFFERENT affected item's row.

    The affected items' original rows are permuted among them by a uniformly random
    permutation without fixed points: every affected item receives another affected
    item's row (never its own), and every affected row is received by exactly one item.
    Unlike :func:`swap_with_random_items`, whose sources are drawn with replacement, the
    set of rows stays the same (no row is duplicated or lost), so only the pairing of
    items and features is broken. With ``fraction`` 1 this is the shuffled modality: every
    item shows another item's vector. With several modalities, an item takes all of them
    from the same source. Two items whose rows are equal make a change invisible.

    Args:
      features: modality -> ``(num_items, D)`` array.
      modality: the modality (or modalities) shuffled.
      fraction: share of items affected, in [0, 1]; ``round(fraction * num_items)`` must
        not be 1 (one item cannot receive another affected item's row).
      rng: generator or seed. Items are drawn first, then the permutation.

    Returns:
      A :class:`PerturbResult` whose ``sources`` holds the item whose row each entry of
      ``items`` received (a permutation of ``items`` without fixed points).

    Raises:
      ValueError: unknown modality, ``fraction`` outside [0, 1], or exactly one affected item.
    """
    fraction = _check_fraction(fraction)
    names = _check_modalities(features, modality)
    out, num_items = _copy_features(features)
    rng = np.random.default_rng(rng)
    items = _choose_items(num_items, fraction, rng)
    if len(items) == 1:
        raise ValueError(
            f"shuffling {fraction:g} of {num_items} items affects one item, which has no other affected item to take a row from; "
            "use a larger fraction (or 'swap')"
        )
    sources = items[_derangement(len(items), rng)]
    for name in names:
        out[name][items] = np.asarray(features[name], dtype=np.float32)[sources]
    return PerturbResult(out, items, names, sources)


def check_level(kind: str, level: float, num_items: int | None = None) -> float:
    """``level`` as a float if it is a valid level of ``kind`` (see :data:`PERTURBATIONS`).

    Fraction kinds (:data:`FRACTION_KINDS`) take a share of items in [0, 1]; ``"noise"``
    and ``"campaign"`` any finite number >= 0. With ``num_items``, a ``"shuffle"`` that
    would affect exactly one item is refused too (see :func:`shuffle_items`).

    Args:
      kind: a key of :data:`PERTURBATIONS`.
      level: the level to check.
      num_items: the catalogue's size, when known.

    Returns:
      ``float(level)``.

    Raises:
      ValueError: an unknown kind, or a level out of the kind's range.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; available: {', '.join(PERTURBATIONS)}")
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"{kind} level must be a number, got {level!r}") from None
    if kind in FRACTION_KINDS:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{kind} level is a fraction of items and must be in [0, 1], got {value:g}")
        if kind == "shuffle" and num_items is not None and round(value * num_items) == 1:
            raise ValueError(f"shuffle level {value:g} affects exactly one of {num_items} items, which has no other affected item to take a row from")
    elif not (np.isfinite(value) and value >= 0.0):
        raise ValueError(f"{kind} level must be a finite number >= 0, got {value:g}")
    return value


def apply_perturbation(
    dataset: RecDataset,
    kind: str,
    level: float,
    *,
    seed: int,
    modality: str | Sequence[str] | None = None,
) -> RecDataset:
    """A copy of ``dataset`` whose features are perturbed; the splits are unchanged.

    What ``level`` means (see also :data:`PERTURBATIONS`):

    * ``"noise"``: ``sigma`` of :func:`gaussian_noise` on every item (0.5 = noise with
      half the spread of the features themselves).
    * ``"swap"``: ``fraction`` of items of :func:`swap_with_random_items`, in [0, 1]
      (each gets another item's row, drawn with replacement).
    * ``"campaign"``: ``magnitude`` of :func:`campaign_shift` (1.0 = a shift as long as
      the average feature row) on :data:`CAMPAIGN_FRACTION` of the items.
    * ``"missing"``: ``fraction`` of items of :func:`missing_modality` (zero fill).
    * ``"campaign-items"``: ``fraction`` of items of :func:`campaign_shift`, at magnitude
      :data:`CAMPAIGN_MAGNITUDE`.
    * ``"missing-mean"``: ``fraction`` of items of :func:`missing_modality` (mean fill: the
      mean of the items that keep their features; at 1.0 the mean of all items).
    * ``"shuffle"``: ``fraction`` of items of :func:`shuffle_items` (a permutation among
      the affected items, none keeping its own row).

    Level 0 leaves the features unchanged for every kind. Level 1.0 of ``"missing"``,
    ``"missing-mean"`` and ``"shuffle"`` replaces a modality for every item by zeros, by
    its mean vector, or by another item's vector. The four kinds that existed first
    (``noise``, ``swap``, ``campaign``, ``missing``) draw exactly as they always did: one
    seed gives the same features as before the others were added.

    Args:
      dataset: the clean dataset.
      kind: a key of :data:`PERTURBATIONS`.
      level: see above (:func:`check_level`).
      seed: seeds the perturbation.
      modality: the perturbed modality (or modalities); ``None`` = all of them.

    Returns:
      A new, validated :class:`RecDataset` named ``"<name>~<kind><level>"``.

    Raises:
      ValueError: unknown kind or modality, level out of range, a dataset without features.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; available: {', '.join(PERTURBATIONS)}")
    if not dataset.features:
        raise ValueError(f"dataset {dataset.name!r} has no item features to perturb")
    level = check_level(kind, level, dataset.num_items)
    features = dict(dataset.features)
    names = _check_modalities(features, modality)
    rng = np.random.default_rng(seed)
    if kind == "noise":
        result = gaussian_noise(features, level, modalities=names, rng=rng)
    elif kind == "swap":
        result = swap_with_random_items(features, names, level, rng=rng)
    elif kind == "campaign":
        result = campaign_shift(features, names, CAMPAIGN_FRACTION, level, rng=rng)
    elif kind == "missing":
        result = missing_modality(features, names, level, fill="zero", rng=rng)
    elif kind == "campaign-items":
        result = campaign_shift(features, names, level, CAMPAIGN_MAGNITUDE, rng=rng)
    elif kind == "missing-mean":
        result = missing_modality(features, names, level, fill="mean", rng=rng)
    else:
        result = shuffle_items(features, names, level, rng=rng)
    return dataclasses.replace(dataset, name=f"{dataset.name}~{kind}{level:g}", features=result.features)
