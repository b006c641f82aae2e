"""Tests of the dataset object, the loader's validation, synthetic data and ML-100K parsing."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from mirrorgrad_jax.data import (
    convert_user_graph,
    SYNTHETIC_DEFAULT,
    DatasetError,
    RecDataset,
    load_mmrec,
    make_synthetic,
    per_user_split,
    write_mmrec,
)
from mirrorgrad_jax.data import movielens

# ---------------------------------------------------------------------------------------
# A hand-made dataset folder: 3 users, 4 items.
# ---------------------------------------------------------------------------------------

GOOD_ROWS = [
    # user, item, x_label
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 3, 2),
    (2, 3, 0), (2, 0, 0), (2, 1, 1), (2, 2, 2),
]  # fmt: skip


def write_folder(
    folder: Path,
    rows=GOOD_ROWS,
    *,
    header=("userID", "itemID", "rating", "timestamp", "x_label"),
    name: str | None = None,
    features: dict | None = None,
) -> Path:
    """Writes ``<name>.inter`` (rating/timestamp filled with dummies) and feature files."""
    folder.mkdir(parents=True, exist_ok=True)
    name = name or folder.name
    lines = ["\t".join(header)]
    for user, item, label in rows:
        values = {"userID": user, "itemID": item, "x_label": label, "rating": 5, "timestamp": 1}
        lines.append("\t".join(str(values[column]) for column in header))
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    if features is None:
        rng = np.random.default_rng(0)
        features = {"image": rng.standard_normal((4, 6)), "text": rng.standard_normal((4, 3))}
    for modality, values in features.items():
        np.save(folder / f"{modality}_feat.npy", values)
    return folder


def small_dataset() -> RecDataset:
    return make_synthetic(
        num_users=40, num_items=25, interactions_per_user=8, modalities={"image": 6, "text": 4}
    )


# ---------------------------------------------------------------------------------------
# Loading and the dataset object.
# ---------------------------------------------------------------------------------------


def test_load_reads_splits_sizes_and_features(tmp_path):
    folder = write_folder(tmp_path / "toy")
    ds = load_mmrec(folder)
    assert ds.name == "toy"
    assert (ds.num_users, ds.num_items) == (3, 4)
    # Each split keeps file order.
    np.testing.assert_array_equal(ds.train, [[0, 0], [0, 1], [1, 1], [1, 2], [2, 3], [2, 0]])
    np.testing.assert_array_equal(ds.valid, [[0, 2], [1, 0], [2, 1]])
    np.testing.assert_array_equal(ds.test, [[0, 3], [1, 3], [2, 2]])
    assert ds.train.dtype == np.int32
    assert set(ds.features) == {"image", "text"}
    assert ds.features["image"].dtype == np.float32  # saved as float64, cast like the reference
    assert ds.features["image"].shape == (4, 6)
    assert ds.user_graph is None


def test_num_users_and_items_count_ids_of_every_split(tmp_path):
    # Item 4 occurs only in the test split: a cold item, which still counts.
    rows = GOOD_ROWS + [(3, 0, 0), (3, 1, 0), (3, 2, 1), (3, 4, 2)]
    features = {"image": np.ones((5, 2))}
    ds = load_mmrec(write_folder(tmp_path / "toy", rows, features=features))
    assert (ds.num_users, ds.num_items) == (4, 5)
    assert 4 not in ds.train_item_pool()


def test_arrays_and_mappings_are_read_only(tmp_path):
    ds = load_mmrec(write_folder(tmp_path / "toy"))
    for array in (ds.train, ds.valid, ds.test, *ds.features.values(), *ds.train_csr()):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 1
    with pytest.raises(TypeError):
        ds.features["audio"] = np.zeros((4, 1))  # type: ignore[index]
    with pytest.raises(AttributeError):
        ds.num_users = 5  # type: ignore[misc]


def test_from_arrays_copies_caller_arrays():
    train = np.array([[0, 0], [0, 1], [1, 1]])
    image = np.zeros((3, 2))
    ds = RecDataset.from_arrays("t", train, [[0, 2], [1, 0]], [[1, 2]], {"image": image})
    train[0, 0] = 1
    image[0, 0] = 7.0
    assert ds.train[0, 0] == 0 and ds.features["image"][0, 0] == 0.0


def test_round_trip_write_then_load(tmp_path):
    ds = small_dataset()
    graph = {u: (np.array([(u + 1) % ds.num_users]), np.array([2.0])) for u in range(ds.num_users)}
    ds = RecDataset.from_arrays(
        ds.name, ds.train, ds.valid, ds.test, ds.features, user_graph=graph, verbose=False
    )
    write_mmrec(ds, tmp_path / "out")
    back = load_mmrec(tmp_path / "out", verbose=False)
    assert back.name == ds.name
    assert (back.num_users, back.num_items) == (ds.num_users, ds.num_items)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.split(split), ds.split(split))
    assert set(back.features) == set(ds.features)
    for modality in ds.features:
        np.testing.assert_array_equal(back.features[modality], ds.features[modality])
    assert back.user_graph is not None and len(back.user_graph) == ds.num_users
    ids, weights = back.user_graph[3]
    np.testing.assert_array_equal(ids, [4])
    np.testing.assert_array_equal(weights, [2.0])


def test_inter_file_is_found_by_name_or_when_it_is_the_only_one(tmp_path):
    write_folder(tmp_path / "folder", name="baby")
    assert load_mmrec(tmp_path / "folder").name == "baby"
    write_folder(tmp_path / "folder", name="sports")
    with pytest.raises(DatasetError, match="several .inter files"):
        load_mmrec(tmp_path / "folder")
    assert load_mmrec(tmp_path / "folder", "sports").name == "sports"


def test_explicit_feature_files(tmp_path):
    folder = write_folder(tmp_path / "toy")
    np.save(folder / "clip.npy", np.ones((4, 5)))
    ds = load_mmrec(folder, feature_files={"image": "clip.npy"})
    assert list(ds.features) == ["image"]
    assert ds.features["image"].shape == (4, 5)


def test_train_csr_and_item_pool():
    ds = RecDataset.from_arrays(
        "t",
        train=[[1, 3], [0, 2], [1, 0], [0, 1], [2, 2]],
        valid=[[0, 4], [1, 1]],
        test=[[2, 0]],
        features={},
    )
    indptr, indices = ds.train_csr()
    np.testing.assert_array_equal(indptr, [0, 2, 4, 5])
    np.testing.assert_array_equal(indices, [1, 2, 0, 3, 2])  # sorted within each user
    assert ds.train_csr() is ds.train_csr()  # cached
    np.testing.assert_array_equal(ds.train_item_pool(), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("validation")


def test_summary_and_stats_contain_the_numbers(tmp_path):
    ds = load_mmrec(write_folder(tmp_path / "toy"))
    stats = ds.stats()
    assert stats["num_users"] == 3 and stats["num_items"] == 4
    assert (stats["num_train"], stats["num_valid"], stats["num_test"]) == (6, 3, 3)
    assert stats["sparsity"] == pytest.approx(1 - 12 / 12)
    assert stats["features"] == {"image": (4, 6), "text": (4, 3)}
    text = ds.summary()
    for fragment in ("3 users", "4 items", "12 interactions", "train 6", "valid 3", "test 3",
                     "image 4x6", "text 4x3", "sparsity"):  # fmt: skip
        assert fragment in text


# ---------------------------------------------------------------------------------------
# One test per validation error.
# ---------------------------------------------------------------------------------------


def test_missing_required_columns_are_named(tmp_path):
    folder = write_folder(tmp_path / "toy", header=("userID", "itemID", "rating"),
                          rows=[(0, 0, 0)])  # fmt: skip
    with pytest.raises(DatasetError, match=r"missing the required column\(s\) x_label"):
        load_mmrec(folder)


@pytest.mark.parametrize("bad", ["1.5", "abc", ""])
def test_ids_that_are_not_integers(tmp_path, bad):
    folder = write_folder(tmp_path / "toy")
    inter = folder / "toy.inter"
    lines = inter.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[1] = bad
    lines[3] = "\t".join(fields)
    inter.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=f"non-negative integers.*line 4: itemID='{bad}'"):
        load_mmrec(folder)


def test_negative_ids(tmp_path):
    rows = [(-1, 0, 0)] + GOOD_ROWS
    with pytest.raises(DatasetError, match="userID must be non-negative integers.*line 2"):
        load_mmrec(write_folder(tmp_path / "toy", rows))


def test_ids_that_are_not_contiguous(tmp_path):
    # User ids 0, 1, 5: ids 2, 3, 4 are never used.
    rows = [(5 if user == 2 else user, item, label) for user, item, label in GOOD_ROWS]
    with pytest.raises(DatasetError, match=r"user ids that are not 0..n-1: 3 of the ids 0..5"):
        load_mmrec(write_folder(tmp_path / "toy", rows))


def test_feature_rows_must_match_items(tmp_path):
    folder = write_folder(tmp_path / "toy", features={"image": np.zeros((3, 2))})
    with pytest.raises(DatasetError, match="image_feat.npy has 3 rows, expected 4 items"):
        load_mmrec(folder)


def test_nan_and_inf_features_are_reported_with_the_file(tmp_path):
    values = np.zeros((4, 3))
    values[1, 2] = np.nan
    values[2, 0] = np.inf
    values[2, 1] = np.nan
    folder = write_folder(tmp_path / "toy", features={"text": values})
    with pytest.raises(DatasetError, match="text_feat.npy contains 2 NaN and 1 inf values"):
        load_mmrec(folder)


def test_empty_split(tmp_path):
    rows = [(u, i, 0 if label == 1 else label) for u, i, label in GOOD_ROWS]
    with pytest.raises(DatasetError, match="the valid split is empty"):
        load_mmrec(write_folder(tmp_path / "toy", rows))


def test_duplicates_raise_unless_dedupe(tmp_path, capsys):
    rows = GOOD_ROWS + [(0, 1, 1), (2, 3, 0)]  # (0, 1) was train, (2, 3) was train
    folder = write_folder(tmp_path / "toy", rows)
    with pytest.raises(DatasetError, match="2 duplicate.*dedupe=True"):
        load_mmrec(folder)
    ds = load_mmrec(folder, dedupe=True)
    assert "dropped 2 duplicate" in capsys.readouterr().out
    assert len(ds.train) == 6 and len(ds.valid) == 3  # the first occurrences (train) stay
    assert [0, 1] in ds.train.tolist() and [0, 1] not in ds.valid.tolist()


def test_x_label_outside_0_1_2(tmp_path):
    rows = GOOD_ROWS + [(0, 3, 3)]
    expected = r"x_label must be 0 \(train\).*1 rows have other values \(3\)"
    with pytest.raises(DatasetError, match=expected):
        load_mmrec(write_folder(tmp_path / "toy", rows))


def test_cold_start_users_in_valid_and_test_are_filtered(tmp_path, capsys):
    # User 3 has no train row: its valid and test rows are dropped (reference behaviour).
    rows = GOOD_ROWS + [(3, 0, 1), (3, 1, 2), (3, 2, 2)]
    folder = write_folder(tmp_path / "toy", rows)
    ds = load_mmrec(folder)
    out = capsys.readouterr().out
    assert "filtered 1 valid rows of 1 users" in out
    assert "filtered 2 test rows of 1 users" in out
    assert ds.num_users == 4  # still max(id)+1 over the whole file
    assert 3 not in ds.valid[:, 0] and 3 not in ds.test[:, 0]
    load_mmrec(folder, verbose=False)
    assert capsys.readouterr().out == ""


def test_from_arrays_runs_the_same_validation():
    features = {"image": np.zeros((3, 2))}
    train, valid, test = [[0, 0], [1, 1]], [[0, 1]], [[1, 2]]
    RecDataset.from_arrays("ok", train, valid, test, features)
    expected = "the 'image' feature matrix has 3 rows, expected 4 items"
    with pytest.raises(DatasetError, match=expected):
        RecDataset.from_arrays("x", train, valid, [[1, 2], [1, 3]], features)
    with pytest.raises(DatasetError, match="the test split is empty"):
        RecDataset.from_arrays("x", train, valid, np.zeros((0, 2)), features)
    with pytest.raises(DatasetError, match="not integers"):
        RecDataset.from_arrays("x", [[0, 0.5], [1, 1]], valid, test, features)
    with pytest.raises(DatasetError, match="1 duplicate"):
        RecDataset.from_arrays("x", train, [[0, 1]], [[0, 1], [1, 2]], features)
    with pytest.raises(DatasetError, match="item ids that are not 0..n-1: 1 of"):
        RecDataset.from_arrays("x", train, valid, test, features, num_items=4)


def test_direct_construction_checks_invariants():
    with pytest.raises(DatasetError, match="the train split has item id 5, but num_items is 3"):
        RecDataset("x", 2, 3, np.array([[0, 5]]), np.array([[0, 1]]), np.array([[0, 2]]), {})
    with pytest.raises(DatasetError, match="without train rows"):
        RecDataset("x", 2, 3, np.array([[0, 0]]), np.array([[1, 1]]), np.array([[0, 2]]), {})


def test_user_graph_must_cover_every_user(tmp_path):
    folder = write_folder(tmp_path / "toy")
    graph = {0: [[1], [1.0]], 1: [[0], [1.0]]}  # user 2 missing
    np.save(folder / "user_graph_dict.npy", np.array(graph, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="user graph has 2 users, expected 3"):
        load_mmrec(folder)


# ---------------------------------------------------------------------------------------
# The per-user split and the synthetic dataset.
# ---------------------------------------------------------------------------------------


def expected_sizes(n: int) -> tuple[int, int, int]:
    """The reference formula, written out independently."""
    if n < 10:
        return n - 2, 1, 1
    vt = math.floor(0.2 * n)
    return n - vt, vt // 2, vt - vt // 2


def test_per_user_split_follows_the_reference_formula():
    rng = np.random.default_rng(1)
    sizes = np.arange(3, 40)
    users = np.repeat(np.arange(len(sizes)), sizes)
    items = np.concatenate([np.arange(n) for n in sizes])
    pairs = np.stack([users, items], axis=1)[rng.permutation(len(users))]
    train, valid, test = per_user_split(pairs, np.random.default_rng(0))
    for user, n in enumerate(sizes):
        got = tuple(int((split[:, 0] == user).sum()) for split in (train, valid, test))
        assert got == expected_sizes(int(n)), n
    together = np.concatenate([train, valid, test])
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, pairs.tolist()))
    again = per_user_split(pairs, np.random.default_rng(0))
    for a, b in zip((train, valid, test), again):
        np.testing.assert_array_equal(a, b)


def test_per_user_split_rejects_users_with_fewer_than_3_rows():
    with pytest.raises(DatasetError, match="1 users have fewer"):
        per_user_split(np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]]), np.random.default_rng(0))


def test_synthetic_is_deterministic_per_seed():
    a, b = small_dataset(), small_dataset()
    c = make_synthetic(num_users=40, num_items=25, interactions_per_user=8,
                       modalities={"image": 6, "text": 4}, seed=1)  # fmt: skip
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(a.split(split), b.split(split))
    for modality in a.features:
        np.testing.assert_array_equal(a.features[modality], b.features[modality])
    assert not np.array_equal(a.train, c.train)


def test_synthetic_split_invariants():
    ds = make_synthetic(num_users=300, num_items=120, interactions_per_user=14)
    assert (ds.num_users, ds.num_items) == (300, 120)
    counts = {s: np.bincount(ds.split(s)[:, 0], minlength=300) for s in ("train", "valid", "test")}
    assert counts["train"].min() >= 3 and counts["valid"].min() >= 1 and counts["test"].min() >= 1
    totals = counts["train"] + counts["valid"] + counts["test"]
    assert totals.min() >= 5
    for user in range(300):
        got = (counts["train"][user], counts["valid"][user], counts["test"][user])
        assert got == expected_sizes(int(totals[user]))
    everything = np.concatenate([ds.train, ds.valid, ds.test])
    assert len(np.unique(everything[:, 1])) == 120  # every item id is used
    assert abs(len(everything) / 300 - 14) < 2.5  # mean interactions per user
    assert {m: f.shape for m, f in ds.features.items()} == {"image": (120, 128), "text": (120, 64)}
    assert all(f.dtype == np.float32 for f in ds.features.values())


def test_synthetic_noise_dims_share_of_pure_noise_columns():
    ds = make_synthetic(num_users=50, num_items=200, interactions_per_user=6,
                        modalities={"image": 40}, noise_dims=0.25, feature_noise=0.0)  # fmt: skip
    # Without feature noise the informative columns lie in the 16-dim factor space, so
    # they are (numerically) linear combinations of 16 directions; the 10 noise columns
    # add 10 more: rank 26 = 16 + 0.25 * 40.
    assert np.linalg.matrix_rank(ds.features["image"].astype(np.float64), tol=1e-3) == 26


def recall_at_20(ds: RecDataset, scores: np.ndarray) -> float:
    scores = scores.astype(np.float64).copy()
    scores[ds.train[:, 0], ds.train[:, 1]] = -np.inf
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    truth = np.zeros(scores.shape, dtype=bool)
    truth[ds.test[:, 0], ds.test[:, 1]] = True
    return float((np.take_along_axis(truth, top, 1).sum(1) / truth.sum(1)).mean())


def test_synthetic_signal_is_learnable_by_matrix_factorisation():
    ds = make_synthetic(
        num_users=400, num_items=300, interactions_per_user=15, modalities={"image": 4}, seed=3
    )
    interactions = np.zeros((ds.num_users, ds.num_items))
    interactions[ds.train[:, 0], ds.train[:, 1]] = 1.0
    # PureSVD: the top-16 right singular vectors, from the small item Gram matrix.
    _, eigenvectors = np.linalg.eigh(interactions.T @ interactions)
    factors = eigenvectors[:, -16:].T
    pure_svd = recall_at_20(ds, interactions @ factors.T @ factors)
    random = recall_at_20(ds, np.random.default_rng(0).random(interactions.shape))
    popularity = recall_at_20(ds, np.broadcast_to(interactions.sum(0), interactions.shape))
    # Random ranking gets about 20/300 ~ 0.07; a rank-16 factorisation must do far
    # better and also beat popularity ranking (so the signal is personal).
    assert pure_svd > 3 * random
    assert pure_svd > popularity


def test_synthetic_default_size():
    assert SYNTHETIC_DEFAULT["num_users"] * SYNTHETIC_DEFAULT["interactions_per_user"] < 60_000


# ---------------------------------------------------------------------------------------
# MovieLens-100K parsing (offline, on hand-made fakes of both source formats).
# ---------------------------------------------------------------------------------------


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in movielens.ML100K_GENRES)


FAKE_U_ITEM = "\n".join([
    "1|Toy Story (1995)|01-Jan-1995||http://x|" + flags("Animation", "Children's", "Comedy"),
    f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags('Action', 'Thriller')}",
    f"3|unknown||||{flags('unknown')}",
    f"4|Usual Suspects, The (1995)|14-Aug-1995||http://x|{flags('Crime', 'Thriller')}",
    f"9|Never Rated (1990)|01-Jan-1990||http://x|{flags('Drama')}",
])  # fmt: skip

FAKE_ITEM_ATOMIC = "\n".join([
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "2\tGoldenEye\t1995\tAction Thriller",
    "3\tunkonwn\tunkonwn\tunknown",
    "4\tUsual Suspects, The\t1995\tCrime Thriller",
    "9\tNever Rated\t1990\tDrama",
])  # fmt: skip

# (user, item, rating, timestamp); users 7 and 5 each rate 3-4 items, user 7 first.
FAKE_RATINGS = [
    (7, 2, 3, 100), (7, 1, 5, 101), (5, 1, 4, 102), (7, 4, 1, 103),
    (5, 3, 2, 104), (5, 2, 5, 105), (7, 3, 4, 106), (5, 4, 3, 107),
]  # fmt: skip


def fake_u_data() -> str:
    return "\n".join("\t".join(map(str, row)) for row in FAKE_RATINGS) + "\n"


def fake_inter_atomic() -> str:
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    return "\n".join([header] + ["\t".join(map(str, row)) for row in FAKE_RATINGS]) + "\n"


def test_parse_grouplens_format():
    raw = movielens.parse_grouplens(fake_u_data(), FAKE_U_ITEM)
    np.testing.assert_array_equal(raw.users, [7, 7, 5, 7, 5, 5, 7, 5])
    np.testing.assert_array_equal(raw.items, [2, 1, 1, 4, 3, 2, 3, 4])
    np.testing.assert_array_equal(raw.item_ids, [1, 2, 3, 4, 9])
    assert raw.titles[0] == "Toy Story" and raw.titles[3] == "Usual Suspects, The"
    assert raw.titles[2] == "unknown"
    np.testing.assert_array_equal(raw.years[[0, 1, 3, 4]], [1995, 1995, 1995, 1990])
    assert math.isnan(raw.years[2])
    assert raw.genres[0] == ("Animation", "Children's", "Comedy")
    assert raw.genres[2] == ("unknown",)


def test_parse_recbole_atomic_format():
    raw = movielens.parse_recbole(fake_inter_atomic(), FAKE_ITEM_ATOMIC)
    np.testing.assert_array_equal(raw.users, [7, 7, 5, 7, 5, 5, 7, 5])
    np.testing.assert_array_equal(raw.items, [2, 1, 1, 4, 3, 2, 3, 4])
    assert raw.titles[3] == "Usual Suspects, The"
    assert math.isnan(raw.years[2])  # RecBole spells the unknown year "unkonwn"
    assert raw.genres[0] == ("Animation", "Children's", "Comedy")


def test_both_sources_build_the_same_dataset():
    grouplens = movielens.build_movielens(
        movielens.parse_grouplens(fake_u_data(), FAKE_U_ITEM), text_dims=3, verbose=False
    )
    # RecBole writes the "unknown" movie as title "unkonwn" with year "unkonwn"; give
    # it the GroupLens title so that the two text features can be compared exactly.
    item_table = FAKE_ITEM_ATOMIC.replace("unkonwn\tunkonwn", "unknown\t")
    recbole = movielens.build_movielens(
        movielens.parse_recbole(fake_inter_atomic(), item_table), text_dims=3, verbose=False
    )
    assert (grouplens.num_users, grouplens.num_items) == (2, 4)  # item 9 is never rated
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(grouplens.split(split), recbole.split(split))
    for modality in ("text", "meta"):
        np.testing.assert_allclose(
            grouplens.features[modality], recbole.features[modality], atol=1e-6
        )
    # Items are numbered by first appearance: raw 2 -> 0, 1 -> 1, 4 -> 2, 3 -> 3.
    meta = grouplens.features["meta"]
    assert meta.shape == (4, len(movielens.ML100K_GENRES) + 2)
    genre = {g: j for j, g in enumerate(movielens.ML100K_GENRES)}
    assert meta[0, genre["Action"]] == 1 and meta[0, genre["Thriller"]] == 1
    assert meta[1, genre["Animation"]] == 1 and meta[1, genre["Action"]] == 0
    assert meta[3, -1] == 1.0 and meta[3, -2] == 0.0  # unknown year: flag set, z-score 0
    assert meta[0, -1] == 0.0


def test_tfidf_matches_a_hand_computed_value():
    docs = ["red apple", "green apple apple", "Red car!"]
    matrix, vocabulary = movielens.tfidf(docs)
    assert vocabulary == ["apple", "car", "green", "red"]
    # Document 1: apple tf=2, df=2 -> idf = ln(4/3) + 1; green tf=1, df=1 -> ln(4/2) + 1.
    apple, green = 2 * (math.log(4 / 3) + 1), math.log(2) + 1
    norm = math.hypot(apple, green)
    np.testing.assert_allclose(matrix[1], [apple / norm, 0, green / norm, 0], rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-12)


def test_truncated_svd_keeps_the_leading_directions():
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 10))
    embedding = movielens.truncated_svd(low_rank, 5)
    assert embedding.shape == (30, 5)
    np.testing.assert_allclose(embedding[:, 2:], 0.0, atol=1e-10)
    # The projection preserves inner products of the rows (rank-2 data, 2 components).
    np.testing.assert_allclose(embedding @ embedding.T, low_rank @ low_rank.T, atol=1e-9)
    pivots = embedding[np.argmax(np.abs(embedding), axis=0), np.arange(5)]
    assert (pivots[:2] > 0).all()


@pytest.mark.skipif(
    os.environ.get("MIRRORGRAD_NETWORK_TESTS") != "1",
    reason="downloads MovieLens-100K; set MIRRORGRAD_NETWORK_TESTS=1",
)
def test_movielens_100k_download_build_and_cache(tmp_path):
    ds = movielens.load_movielens_100k(tmp_path, verbose=False)
    assert (ds.num_users, ds.num_items) == (943, 1682)
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 100_000
    assert ds.features["text"].shape == (1682, 64)
    cached = movielens.load_movielens_100k(tmp_path, verbose=False)
    np.testing.assert_array_equal(cached.train, ds.train)
    np.testing.assert_array_equal(cached.features["text"], ds.features["text"])


def test_dataset_pickles_and_stays_read_only():
    import pickle

    ds = small_dataset()
    back = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(back.train, ds.train)
    np.testing.assert_array_equal(back.features["image"], ds.features["image"])
    assert not back.train.flags.writeable and not back.features["image"].flags.writeable


def test_mmrec_user_graph_is_read_without_unpickling_code(tmp_path):
    # MMRec's generator stores lists of numpy numbers; the restricted reader admits them.
    folder = write_folder(tmp_path / "toy")
    # User 1's lists are numpy arrays: pickled as numpy does, an empty (0,) array filled from the file.
    graph = {0: [[np.int64(1), 2], [np.float64(2.0), 1.0]], 1: [np.array([0]), np.array([2.0])], 2: [[], []]}
    np.save(folder / "user_graph_dict.npy", np.array(graph, dtype=object), allow_pickle=True)
    ds = load_mmrec(folder)
    np.testing.assert_array_equal(ds.user_graph[1][0], [0])
    np.testing.assert_array_equal(ds.user_graph[0][0], [1, 2])
    np.testing.assert_array_equal(ds.user_graph[0][1], [2.0, 1.0])
    assert len(ds.user_graph[2][0]) == 0
    # Converted once, the folder reads from user_graph.npz (plain arrays) from then on.
    out = convert_user_graph(folder)
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["indptr", "neighbours", "weights"]
    (folder / "user_graph_dict.npy").unlink()
    again = load_mmrec(folder)
    for u in range(3):
        np.testing.assert_array_equal(again.user_graph[u][0], ds.user_graph[u][0])
        np.testing.assert_array_equal(again.user_graph[u][1], ds.user_graph[u][1])


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo should-never-run",))


class _AllocatesFirst:
    """What numpy's pickle looks like with the empty (0,) shape replaced by a huge one."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (10**13,), b"b"))


@pytest.mark.parametrize(
    "payload, message",
    [(_RunsCode(), "refused to load posix.system"), (_AllocatesFirst(), "refused an array of shape (10000000000000,)")],
)
def test_a_crafted_user_graph_is_refused_before_it_runs_or_allocates(payload, message, tmp_path):
    folder = write_folder(tmp_path / "toy")
    np.save(folder / "user_graph_dict.npy", np.array({0: payload}, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_mmrec(folder)


def test_written_user_graph_round_trips_without_pickles(tmp_path):
    ds = load_mmrec(write_folder(tmp_path / "toy"))
    graph = {0: ([1], [3.0]), 1: ([0, 2], [3.0, 1.0]), 2: ([], [])}
    with_graph = RecDataset.from_arrays(ds.name, ds.train, ds.valid, ds.test, ds.features, user_graph=graph, verbose=False)
    write_mmrec(with_graph, tmp_path / "out")
    assert (tmp_path / "out" / "user_graph.npz").is_file() and not (tmp_path / "out" / "user_graph_dict.npy").exists()
    back = load_mmrec(tmp_path / "out")
    for u, (ids, weights) in graph.items():
        np.testing.assert_array_equal(back.user_graph[u][0], ids)
        np.testing.assert_array_equal(back.user_graph[u][1], weights)


def _first_feature(folder: Path) -> Path:
    return sorted(folder.glob("*_feat.npy"))[0]


def _forge_header(path: Path) -> None:
    """A 128-byte .npy whose header declares an 8 TB float32 array."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (2_000_000_000, 1000)})


def _npy_version(path: Path, major: int) -> None:
    """The same array with its header's version bytes set to ``major``.0 (numpy writes 1, 2 and 3)."""
    data = bytearray(path.read_bytes())
    data[6] = major  # after the magic string b"\x93NUMPY"
    path.write_bytes(bytes(data))


def _huge_header(path: Path) -> None:
    """A format 2.0 file whose header length field says 4e9 bytes (numpy's reader would read them all first)."""
    path.write_bytes(b"\x93NUMPY\x02\x00" + (4_000_000_000).to_bytes(4, "little") + b"{'descr': '<f4'}")


def _non_utf8(path: Path) -> None:
    path.write_bytes(b"userID\titemID\tx_label\n0\t1\t0\n1\t\xff\t0\n")


def _huge_id(path: Path) -> None:
    path.write_text(path.read_text() + "4611686018427387904\t1\t5\t1\t0\n")  # userID itemID rating timestamp x_label


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: _forge_header(_first_feature(f)), "declares a float32 array of shape (2000000000, 1000)"),
        (lambda f: np.save(_first_feature(f), np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True), "holds Python objects"),
        (lambda f: _npy_version(_first_feature(f), 9), "is stored in .npy format 9.0, which cannot be read (1.0, 2.0 and 3.0 can)"),
        (lambda f: _huge_header(_first_feature(f)), "declares a .npy header of 4,000,000,000 bytes, more than the 10,000 read"),
        (lambda f: _non_utf8(next(f.glob("*.inter"))), "is not UTF-8 text"),
        (lambda f: _huge_id(next(f.glob("*.inter"))), "userID 4611686018427387904 at line 14 does not fit in int32"),
    ],
)
def test_a_crafted_folder_is_one_clear_error_before_anything_large_is_allocated(spoil, message, tmp_path):
    """Each of these made numpy allocate what the file declared (MemoryError) or raised a decode traceback."""
    folder = write_folder(tmp_path / "toy")
    spoil(folder)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_mmrec(folder)


def test_features_in_each_npy_format_numpy_writes_load_the_same(tmp_path):
    """Format 3.0 (a UTF-8 header) is read as 2.0 is: the same numbers as the 1.0 file."""
    folder = write_folder(tmp_path / "toy")
    feature = _first_feature(folder)
    expected = np.load(feature)
    for version in ((2, 0), (3, 0)):
        with open(feature, "wb") as handle:
            np.lib.format.write_array(handle, expected, version=version)
        assert feature.read_bytes()[6] == version[0]
        modality = feature.name[: -len("_feat.npy")]
        np.testing.assert_array_equal(load_mmrec(folder).features[modality], expected.astype(np.float32))  # loaded as float32


@pytest.mark.parametrize(
    "graph, message",
    [
        ({math.inf: ([0], [1.0]), 1: ([0], [1.0]), 2: ([], [])}, "user key inf is not an integer"),
        ({0: ([1], ["x"]), 1: ([0], [1.0]), 2: ([], [])}, "the neighbours or weights of user 0 are not flat numeric lists"),
        ({0: ([[1], [0, 1]], [1.0]), 1: ([0], [1.0]), 2: ([], [])}, "the neighbours or weights of user 0 are not flat numeric lists"),
    ],
)
def test_a_malformed_user_graph_is_a_dataset_error(graph, message):
    from mirrorgrad_jax.data.dataset import check_user_graph

    with pytest.raises(DatasetError, match=re.escape(message)):
        check_user_graph(graph, 3, "user_graph")


def test_ids_far_beyond_the_row_count_are_refused_before_a_mask_is_allocated():
    """An id of 1e12 among 4 rows cannot be contiguous; the id mask would take a terabyte."""
    with pytest.raises(DatasetError, match=re.escape("the largest is 1000000000000 but there are only 4 rows")):
        RecDataset.from_arrays("x", np.array([[0, 0], [10**12, 1]]), np.array([[0, 1]]), np.array([[0, 0]]), {}, verbose=False)


def test_a_grouplens_item_id_that_is_not_a_number_names_its_line():
    bad = FAKE_U_ITEM.replace("4|Usual Suspects", "x4|Usual Suspects")
    with pytest.raises(DatasetError, match=re.escape("u.item line 4: the item id 'x4' is not a whole number")):
        movielens.parse_grouplens(fake_u_data(), bad)


def test_movielens_offline_is_one_line_at_the_command_line_and_still_a_runtime_error(tmp_path, monkeypatch, capsys):
    """No network and no raw files: what to do, in one line and exit 2 (it was a RuntimeError traceback)."""
    from mirrorgrad_jax.cli import main

    def offline(raw_dir, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(movielens, "_download_grouplens", offline)
    monkeypatch.setattr(movielens, "_download_recbole_wheel", offline)
    with pytest.raises(RuntimeError, match="could not obtain MovieLens-100K"):  # what callers caught before
        movielens.load_movielens_100k(tmp_path / "cache", verbose=False)
    monkeypatch.setattr(movielens, "_default_cache_root", lambda: tmp_path / "root")
    assert main(["train", "--model", "bprmf", "--dataset", "movielens-100k", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not obtain MovieLens-100K" in err[0] and "Offline, put u.data" in err[0]


def test_a_damaged_movielens_cache_is_rebuilt_from_its_raw_files(tmp_path):
    """build_info.json that is not JSON (a stop mid-write, a bad disk): rebuilt, not a traceback."""
    cache = tmp_path / "cache"
    (cache / "raw").mkdir(parents=True)
    (cache / "raw" / "u.data").write_text(fake_u_data())
    (cache / "raw" / "u.item").write_text(FAKE_U_ITEM)
    first = movielens.load_movielens_100k(cache, verbose=False)
    (cache / "build_info.json").write_text('{"format": ')
    again = movielens.load_movielens_100k(cache, verbose=False)
    np.testing.assert_array_equal(again.train, first.train)
    assert json.loads((cache / "build_info.json").read_text())["format"]  # written whole again


def test_a_user_graph_npz_declaring_more_than_it_holds_is_refused_before_it_is_read(tmp_path):
    """np.load allocates what a member's header declares; the members are sized from their headers first."""
    import io
    import zipfile

    folder = write_folder(tmp_path / "toy")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(folder / "user_graph.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("indptr.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(DatasetError, match=re.escape("user_graph.npz: indptr declares shape (1000000000000,) int64 (8,000,000,000,000 bytes) but the archive holds only")):
        load_mmrec(folder)
