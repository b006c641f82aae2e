"""Feature perturbations: stated statistics, only the stated rows/modalities touched, pure and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.analysis.perturb import (
    apply_perturbation,
    CAMPAIGN_FRACTION,
    campaign_shift,
    gaussian_noise,
    missing_modality,
    PERTURBATIONS,
    swap_with_random_items,
)

NUM_ITEMS = 4000


def _features(num_items: int = NUM_ITEMS, read_only: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    # Dimensions with very different spreads and offsets, so per-dimension scaling matters.
    image = (rng.standard_normal((num_items, 3)) * np.array([0.5, 2.0, 10.0]) + np.array([1.0, -3.0, 0.0])).astype(np.float32)
    text = rng.standard_normal((num_items, 5)).astype(np.float32)
    feats = {"image": image, "text": text}
    if read_only:  # any in-place write to the input would raise
        for arr in feats.values():
            arr.setflags(write=False)
    return feats


def _untouched_rows(result, num_items: int) -> np.ndarray:
    mask = np.ones(num_items, dtype=bool)
    mask[result.items] = False
    return mask


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_noise_std_per_dimension_is_sigma_times_feature_std(fraction):
    feats = _features()
    sigma = 0.3
    out = gaussian_noise(feats, sigma, modalities="image", fraction=fraction, rng=1)
    n = len(out.items)
    assert n == round(fraction * NUM_ITEMS)
    noise = out.features["image"][out.items].astype(np.float64) - feats["image"][out.items]
    expected = sigma * feats["image"].astype(np.float64).std(axis=0)
    # The sample std of n Gaussians has relative standard error 1/sqrt(2n); allow 5 of them.
    np.testing.assert_allclose(noise.std(axis=0), expected, rtol=5 / np.sqrt(2 * n))
    # The mean has standard error std/sqrt(n); allow 5 of them.
    assert np.all(np.abs(noise.mean(axis=0)) < 5 * expected / np.sqrt(n))
    untouched = _untouched_rows(out, NUM_ITEMS)
    assert np.array_equal(out.features["image"][untouched], feats["image"][untouched])
    assert out.features["text"].tobytes() == feats["text"].tobytes()
    assert out.modalities == ("image",)


def test_noise_uses_the_same_items_in_every_modality_and_all_by_default():
    feats = _features()
    out = gaussian_noise(feats, 0.5, fraction=0.25, rng=3)
    assert out.modalities == ("image", "text")
    for name in feats:
        changed = np.flatnonzero(np.any(out.features[name] != feats[name], axis=1))
        assert np.array_equal(changed, out.items)


def test_campaign_adds_one_shared_direction_with_the_stated_magnitude():
    feats = _features()
    out = campaign_shift(feats, "image", 0.3, 1.5, rng=4)
    assert len(out.items) == round(0.3 * NUM_ITEMS)
    shifts = out.features["image"][out.items].astype(np.float64) - feats["image"][out.items]
    # float32 storage rounds each entry by <= 6e-8 relative to |x| (|x| < ~60 here).
    np.testing.assert_allclose(shifts, np.broadcast_to(shifts[0], shifts.shape), atol=1e-5)
    mean_norm = np.linalg.norm(feats["image"].astype(np.float64), axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(shifts[0]), 1.5 * mean_norm, rtol=1e-5)
    untouched = _untouched_rows(out, NUM_ITEMS)
    assert np.array_equal(out.features["image"][untouched], feats["image"][untouched])
    assert out.features["text"].tobytes() == feats["text"].tobytes()


def test_swap_copies_another_items_row_never_its_own():
    feats = _features(num_items=50)
    out = swap_with_random_items(feats, "text", 1.0, rng=5)
    assert np.array_equal(out.items, np.arange(50))
    assert np.all(out.sources != out.items)
    assert np.array_equal(out.features["text"][out.items], feats["text"][out.sources])
    assert out.features["image"].tobytes() == feats["image"].tobytes()
    # Every row now equals a DIFFERENT item's original row (rows are distinct Gaussians).
    for item, row in enumerate(out.features["text"]):
        (matches,) = np.nonzero(np.all(feats["text"] == row, axis=1))
        assert matches.tolist() == [out.sources[item]] and matches[0] != item


def test_swap_of_several_modalities_takes_them_from_one_source():
    feats = _features(num_items=200)
    out = swap_with_random_items(feats, ("image", "text"), 0.5, rng=6)
    for name in feats:
        assert np.array_equal(out.features[name][out.items], feats[name][out.sources])
        untouched = _untouched_rows(out, 200)
        assert np.array_equal(out.features[name][untouched], feats[name][untouched])


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_missing_modality_fills(fill):
    feats = _features(num_items=300)
    out = missing_modality(feats, "image", 0.4, fill=fill, rng=8)
    untouched = _untouched_rows(out, 300)
    expected = 0.0 if fill == "zero" else feats["image"][untouched].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out.features["image"][out.items], np.broadcast_to(expected, (len(out.items), 3)), rtol=1e-6)
    assert np.array_equal(out.features["image"][untouched], feats["image"][untouched])
    assert out.features["text"].tobytes() == feats["text"].tobytes()


def test_inputs_are_never_mutated_and_outputs_are_fresh_arrays():
    feats = _features(num_items=100, read_only=False)
    before = {k: v.copy() for k, v in feats.items()}
    results = [
        gaussian_noise(feats, 1.0, rng=0),
        swap_with_random_items(feats, "image", 0.5, rng=0),
        campaign_shift(feats, "text", 0.5, 2.0, rng=0),
        missing_modality(feats, "image", 0.5, fill="mean", rng=0),
    ]
    for name in feats:
        assert np.array_equal(feats[name], before[name])
    for result in results:
        for name in feats:
            assert not np.shares_memory(result.features[name], feats[name])
            assert result.features[name].dtype == np.float32


@pytest.mark.parametrize(
    "perturb",
    [
        lambda f, r: gaussian_noise(f, 0.7, fraction=0.3, rng=r),
        lambda f, r: swap_with_random_items(f, "image", 0.3, rng=r),
        lambda f, r: campaign_shift(f, "image", 0.3, 1.0, rng=r),
        lambda f, r: missing_modality(f, "image", 0.3, rng=r),
    ],
)
def test_same_seed_same_perturbation_other_seed_other_items(perturb):
    feats = _features(num_items=500)
    a, b, c = perturb(feats, 11), perturb(feats, np.random.default_rng(11)), perturb(feats, 12)
    assert np.array_equal(a.items, b.items)
    for name in feats:
        assert a.features[name].tobytes() == b.features[name].tobytes()
    assert not np.array_equal(a.items, c.items)


def test_bad_inputs_raise_clear_errors():
    feats = _features(num_items=20)
    with pytest.raises(ValueError, match=r"unknown modality 'audio'; available: 'image', 'text'"):
        campaign_shift(feats, "audio", 0.5, 1.0, rng=0)
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        gaussian_noise(feats, 1.0, modalities=["image", "video"], rng=0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
            swap_with_random_items(feats, "image", bad, rng=0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_noise(feats, -1.0, rng=0)
    with pytest.raises(ValueError, match="magnitude must be >= 0"):
        campaign_shift(feats, "image", 0.5, -1.0, rng=0)
    with pytest.raises(ValueError, match="fill must be 'zero' or 'mean'"):
        missing_modality(feats, "image", 0.5, fill="median", rng=0)
    with pytest.raises(ValueError, match="rows but another modality has"):
        gaussian_noise({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, 1.0, rng=0)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(num_users=150, num_items=100, modalities={"image": 12, "text": 6}, seed=2)


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_apply_perturbation_keeps_splits_and_level_zero_changes_nothing(dataset, kind):
    zero = apply_perturbation(dataset, kind, 0.0, seed=0, modality="image")
    changed = apply_perturbation(dataset, kind, 0.5, seed=0, modality="image")
    for split in ("train", "valid", "test"):
        assert np.array_equal(changed.split(split), dataset.split(split))
    for name in dataset.features:
        assert np.array_equal(zero.features[name], dataset.features[name])
    assert changed.features["text"].tobytes() == dataset.features["text"].tobytes()
    assert not np.array_equal(changed.features["image"], dataset.features["image"])
    assert changed.name == f"{dataset.name}~{kind}0.5" and (changed.num_users, changed.num_items) == (dataset.num_users, dataset.num_items)


def test_apply_perturbation_levels_mean_what_the_docs_say(dataset):
    campaign = apply_perturbation(dataset, "campaign", 2.0, seed=1, modality="text")
    moved = np.any(campaign.features["text"] != dataset.features["text"], axis=1)
    assert moved.sum() == round(CAMPAIGN_FRACTION * dataset.num_items)
    missing = apply_perturbation(dataset, "missing", 0.3, seed=1)  # all modalities, zero fill
    gone = np.all(missing.features["image"] == 0, axis=1)
    assert gone.sum() == 30 and np.array_equal(gone, np.all(missing.features["text"] == 0, axis=1))
    with pytest.raises(ValueError, match="unknown perturbation 'blur'; available: noise, swap, campaign, missing"):
        apply_perturbation(dataset, "blur", 1.0, seed=0)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        apply_perturbation(dataset, "noise", 1.0, seed=0, modality="audio")
