"""Feature perturbations: stated statistics, only the stated rows/modalities touched, pure and seeded."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.analysis.perturb import (
    apply_perturbation,
    CAMPAIGN_FRACTION,
    CAMPAIGN_MAGNITUDE,
    campaign_shift,
    check_level,
    gaussian_noise,
    missing_modality,
    PERTURBATIONS,
    shuffle_items,
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
    with pytest.raises(ValueError, match="unknown perturbation 'blur'; available: noise, swap, campaign, missing, campaign-items, missing-mean, shuffle"):
        apply_perturbation(dataset, "blur", 1.0, seed=0)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        apply_perturbation(dataset, "noise", 1.0, seed=0, modality="audio")


# ---------------------------------------------------------------------------------------
# The kinds of the extreme-shift study: campaign-items, missing-mean, shuffle.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """Six items whose image rows are [2i, 2i + 1] (all distinct), a constant text modality."""
    ds = make_synthetic(num_users=12, num_items=6, interactions_per_user=4, min_interactions=3, modalities={"image": 2, "text": 1}, seed=0)
    image = np.arange(12, dtype=np.float32).reshape(6, 2)
    return dataclasses.replace(ds, features={"image": image, "text": np.full((6, 1), 7.0, np.float32)})


def _row_ids(image: np.ndarray) -> list[int]:
    """Which original item each row of a tiny image matrix is (row [2i, 2i + 1] is item i)."""
    assert np.all(image[:, 1] == image[:, 0] + 1) and np.all(image[:, 0] % 2 == 0)
    return (image[:, 0] // 2).astype(int).tolist()


def test_shuffle_of_every_item_gives_each_another_items_row_and_keeps_every_row_once(tiny):
    for seed in range(20):
        out = apply_perturbation(tiny, "shuffle", 1.0, seed=seed, modality="image")
        ids = _row_ids(out.features["image"])
        assert sorted(ids) == list(range(6)), ids  # a permutation: no row lost or doubled
        assert all(ids[i] != i for i in range(6)), ids  # nobody keeps its own row
        assert out.features["text"].tobytes() == tiny.features["text"].tobytes()


def test_shuffle_of_two_items_exchanges_them_and_a_share_moves_only_its_items(tiny):
    feats = dict(tiny.features)
    out = shuffle_items(feats, "image", 2 / 6, rng=3)  # two items: the only derangement swaps them
    a, b = out.items.tolist()
    ids = _row_ids(out.features["image"])
    assert ids[a] == b and ids[b] == a and out.sources.tolist() == [b, a]
    assert [ids[i] for i in range(6) if i not in (a, b)] == [i for i in range(6) if i not in (a, b)]
    half = shuffle_items(feats, ("image", "text"), 0.5, rng=4)
    ids = _row_ids(half.features["image"])
    assert len(half.items) == 3 and sorted(ids[i] for i in half.items) == half.items.tolist()
    assert all(ids[i] != i for i in half.items) and all(ids[i] == i for i in range(6) if i not in half.items)
    assert [ids[i] for i in half.items] == half.sources.tolist()


def test_shuffle_draws_every_derangement_alike():
    # Three items have two derangements, (1, 2, 0) and (2, 0, 1). Over 2000 seeds each is
    # drawn Binomial(2000, 1/2) times: std 22.4; 5 std of slack (112) makes a false alarm
    # about 1 in 2 million, while a method that always picked one would be off by 1000.
    feats = {"x": np.arange(3, dtype=np.float32)[:, None]}
    counts = {}
    for seed in range(2000):
        key = tuple(shuffle_items(feats, "x", 1.0, rng=seed).sources.tolist())
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(1, 2, 0), (2, 0, 1)}
    assert abs(counts[(1, 2, 0)] - 1000) < 112, counts


def test_swap_of_every_item_draws_sources_with_replacement(tiny):
    # What separates swap from shuffle at level 1: rows may repeat and vanish (never its own).
    repeated = 0
    for seed in range(20):
        ids = _row_ids(apply_perturbation(tiny, "swap", 1.0, seed=seed, modality="image").features["image"])
        assert all(ids[i] != i for i in range(6))
        repeated += len(set(ids)) < 6
    # A draw is a permutation with chance 265/5^6 = 0.017; 20 seeds all permutations: ~1e-35.
    assert repeated > 0


def test_shuffle_of_exactly_one_item_is_refused(tiny):
    with pytest.raises(ValueError, match="affects one item"):
        shuffle_items(dict(tiny.features), "image", 1 / 6, rng=0)
    with pytest.raises(ValueError, match="shuffle level 0.15 affects exactly one of 6 items"):
        apply_perturbation(tiny, "shuffle", 0.15, seed=0)
    assert check_level("shuffle", 0.15) == 0.15  # without the catalogue's size it cannot tell


def test_missing_mean_fills_with_the_mean_vector_of_the_items_that_keep_theirs(tiny):
    every = apply_perturbation(tiny, "missing-mean", 1.0, seed=0, modality="image")
    # Rows [2i, 2i + 1], i = 0..5: the mean row is [5, 6] (all items missing: mean over all).
    assert every.features["image"].tolist() == [[5.0, 6.0]] * 6
    zero = apply_perturbation(tiny, "missing", 1.0, seed=0, modality="image")
    assert zero.features["image"].tolist() == [[0.0, 0.0]] * 6
    half = apply_perturbation(tiny, "missing-mean", 0.5, seed=2, modality="image")
    moved = [i for i in range(6) if half.features["image"][i].tolist() != tiny.features["image"][i].tolist()]
    kept = [i for i in range(6) if i not in moved]
    assert len(moved) == 3
    expected = [sum(2 * i for i in kept) / 3, sum(2 * i + 1 for i in kept) / 3]
    for i in moved:
        np.testing.assert_allclose(half.features["image"][i], expected, rtol=1e-6)  # float32 storage of a mean of 3 small ints
    assert half.features["text"].tobytes() == tiny.features["text"].tobytes()


def test_campaign_items_shifts_the_given_share_by_one_mean_row_norm(dataset):
    for share in (0.2, 0.5, 1.0):
        out = apply_perturbation(dataset, "campaign-items", share, seed=5, modality="image")
        delta = out.features["image"].astype(np.float64) - dataset.features["image"]
        moved = np.flatnonzero(np.any(delta != 0, axis=1))
        assert len(moved) == round(share * dataset.num_items)
        # One shared vector, as long as the average image row (float32 storage: 1e-5 relative).
        np.testing.assert_allclose(delta[moved], np.broadcast_to(delta[moved[0]], delta[moved].shape), atol=1e-5)
        mean_norm = np.linalg.norm(dataset.features["image"].astype(np.float64), axis=1).mean()
        np.testing.assert_allclose(np.linalg.norm(delta[moved[0]]), CAMPAIGN_MAGNITUDE * mean_norm, rtol=1e-5)
        assert out.features["text"].tobytes() == dataset.features["text"].tobytes()
    assert CAMPAIGN_MAGNITUDE == 1.0  # the documented size: a banner as long as the average row


def _old_kind_by_hand(features, kind, level, seed, names):
    """The first four kinds written out again from their documented draws, in numpy."""
    rng = np.random.default_rng(seed)
    out = {k: np.array(v, dtype=np.float32) for k, v in features.items()}
    n = next(iter(out.values())).shape[0]

    def items_of(fraction):
        count = round(fraction * n)
        return np.arange(n) if count == n else np.sort(rng.choice(n, size=count, replace=False))

    if kind == "noise":
        items = items_of(1.0)
        for name in names:
            std = out[name].astype(np.float64).std(axis=0)
            out[name][items] = (out[name][items] + rng.standard_normal((len(items), out[name].shape[1])) * (level * std)).astype(np.float32)
    elif kind == "swap":
        items = items_of(level)
        sources = rng.integers(0, n - 1, size=len(items))
        sources = sources + (sources >= items)
        for name in names:
            out[name][items] = np.asarray(features[name], dtype=np.float32)[sources]
    elif kind == "campaign":
        items = items_of(CAMPAIGN_FRACTION)
        for name in names:
            direction = rng.standard_normal(out[name].shape[1])
            direction /= np.linalg.norm(direction)
            shift = level * np.linalg.norm(out[name].astype(np.float64), axis=1).mean() * direction
            out[name][items] = (out[name][items] + shift).astype(np.float32)
    else:
        items = items_of(level)
        for name in names:
            out[name][items] = 0.0
    return out


@pytest.mark.parametrize(("kind", "level"), [("noise", 0.5), ("noise", 8.0), ("swap", 0.3), ("swap", 1.0), ("campaign", 2.0), ("missing", 0.4)])
@pytest.mark.parametrize("modality", [None, "text"])
def test_the_first_four_kinds_draw_exactly_as_before(dataset, kind, level, modality):
    names = tuple(dataset.features) if modality is None else (modality,)
    for seed in (0, 17):
        got = apply_perturbation(dataset, kind, level, seed=seed, modality=modality)
        want = _old_kind_by_hand(dataset.features, kind, level, seed, names)
        for name in dataset.features:
            assert got.features[name].tobytes() == want[name].tobytes(), (kind, level, seed, name)


@pytest.mark.parametrize(
    ("kind", "level", "message"),
    [
        ("noise", -1.0, "noise level must be a finite number >= 0"),
        ("noise", float("inf"), "noise level must be a finite number >= 0"),
        ("campaign", float("nan"), "campaign level must be a finite number >= 0"),
        ("campaign-items", 1.5, r"campaign-items level is a fraction of items and must be in \[0, 1\]"),
        ("missing-mean", -0.2, r"must be in \[0, 1\]"),
        ("shuffle", float("nan"), r"must be in \[0, 1\]"),
        ("blur", 1.0, "unknown perturbation 'blur'"),
    ],
)
def test_levels_out_of_range_are_refused_before_anything_is_drawn(dataset, kind, level, message):
    with pytest.raises(ValueError, match=message):
        check_level(kind, level)
    with pytest.raises(ValueError, match=message):
        apply_perturbation(dataset, kind, level, seed=0)


def test_every_kind_accepts_the_extreme_ladder():
    ladder = {"noise": (0.5, 1, 2, 4, 8), "campaign-items": (0.2, 0.5, 1), "missing": (1,), "missing-mean": (1,), "shuffle": (1,)}
    for kind, levels in ladder.items():
        assert [check_level(kind, level, num_items=120) for level in levels] == [float(v) for v in levels]
    assert set(PERTURBATIONS) == {"noise", "swap", "campaign", "missing", "campaign-items", "missing-mean", "shuffle"}
    assert list(itertools.islice(PERTURBATIONS, 4)) == ["noise", "swap", "campaign", "missing"]  # old order kept first
