"""Interaction preparation: reading, cleaning, k-core and re-indexing against slow references."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prepare_raw import amazon_rows, write_ratings

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import (
    clean_interactions,
    k_core_mask,
    read_amazon_ratings,
    read_interaction_table,
    split_per_user,
)

BABY = Path(__file__).resolve().parents[2] / "shared" / "data" / "baby-graph" / "baby.inter"


# ---------------------------------------------------------------------------------------
# Independent slow implementations (plain Python, row by row).
# ---------------------------------------------------------------------------------------


def slow_dedupe(rows):
    """Keeps the first row of each (user, item, time): the reference's drop_duplicates."""
    seen, kept = set(), []
    for row in rows:
        u, i, _, t = row
        if (u, i, t) not in seen:
            seen.add((u, i, t))
            kept.append(row)
    return kept


def slow_first_of_each_pair(rows):
    seen, kept = set(), []
    for row in rows:
        if row[:2] not in seen:
            seen.add(row[:2])
            kept.append(row)
    return kept


def slow_kcore(rows, user_core=5, item_core=5):
    """Rounds of: count users and items, drop every row of a too-small one, until stable."""
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        bad_u = {u for u, c in users.items() if c < user_core}
        bad_i = {i for i, c in items.items() if c < item_core}
        if not bad_u and not bad_i:
            return rows
        rows = [r for r in rows if r[0] not in bad_u and r[1] not in bad_i]


def slow_reindex(rows):
    user_index, item_index, out = {}, {}, []
    for u, i, r, t in rows:
        out.append((user_index.setdefault(u, len(user_index)), item_index.setdefault(i, len(item_index)), r, t))
    return out, list(user_index), list(item_index)


def slow_clean(rows, user_core=5, item_core=5, repeated_pairs="count"):
    """The reference's steps; repeated pairs kept through the k-core ("count") or dropped before it."""
    rows = slow_dedupe(rows)
    if repeated_pairs == "drop":
        return slow_reindex(slow_kcore(slow_first_of_each_pair(rows), user_core, item_core))
    return slow_reindex(slow_first_of_each_pair(slow_kcore(rows, user_core, item_core)))


def as_rows(inter):
    return list(zip(inter.users.tolist(), inter.items.tolist(), inter.ratings.tolist(), inter.timestamps.tolist()))


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("repeated_pairs", ["count", "drop"])
def test_amazon_ratings_clean_matches_the_slow_reference(tmp_path, repeated_pairs):
    rows = amazon_rows(n_users=60, n_items=30, seed=1)
    rows += [rows[3], rows[10]]  # exact duplicates
    rows.append((rows[5][0], rows[5][1], 1.0, rows[5][3] + 99))  # same pair, another time
    path = write_ratings(tmp_path / "ratings.csv", rows)
    inter = clean_interactions(read_amazon_ratings(path), repeated_pairs=repeated_pairs)
    expected, users, items = slow_clean([(u, i, r, float(t)) for u, i, r, t in rows], repeated_pairs=repeated_pairs)
    assert as_rows(inter) == expected
    assert inter.user_ids.tolist() == users and inter.item_ids.tolist() == items
    assert inter.stats["duplicate_rows"] == 2 and inter.stats["repeated_pairs_mode"] == repeated_pairs
    assert inter.stats["kcore_rows_removed"] > 0  # the data does exercise the filter


def _repeat_decides_the_core():
    """Raw rows where only a repeated pair lifts user "A" and item "x" to a 2-core.

    Users B, C and items y, z form a 2-core of their own; A rated x twice (times 1 and 2)
    and z once. Counting the repeat (the reference), A has 3 rows and x 2: both survive.
    Counting each pair once, A has 2 rows but x has 1, so x goes, then A (1 row left).
    """
    return [
        ("A", "x", 5.0, 1), ("B", "y", 4.0, 3), ("B", "z", 3.0, 4), ("C", "y", 2.0, 5),
        ("C", "z", 1.0, 6), ("A", "x", 4.0, 2), ("A", "z", 3.0, 7), ("A", "x", 5.0, 1),
    ]  # fmt: skip


def test_a_repeated_pair_counts_toward_the_k_core_as_in_the_reference(tmp_path):
    path = write_ratings(tmp_path / "ratings.csv", _repeat_decides_the_core())
    counted = clean_interactions(read_amazon_ratings(path), user_core=2, item_core=2)
    assert counted.user_ids.tolist() == ["A", "B", "C"] and counted.item_ids.tolist() == ["x", "y", "z"]
    # A keeps x once, its first row (time 1), and z.
    assert as_rows(counted) == [(0, 0, 5.0, 1.0), (1, 1, 4.0, 3.0), (1, 2, 3.0, 4.0), (2, 1, 2.0, 5.0), (2, 2, 1.0, 6.0), (0, 2, 3.0, 7.0)]
    assert counted.stats["duplicate_rows"] == 1 and counted.stats["repeated_pairs"] == 1
    dropped = clean_interactions(read_amazon_ratings(path), user_core=2, item_core=2, repeated_pairs="drop")
    assert dropped.user_ids.tolist() == ["B", "C"] and dropped.item_ids.tolist() == ["y", "z"]
    with pytest.raises(DatasetError, match="repeated_pairs must be one of"):
        clean_interactions(read_amazon_ratings(path), repeated_pairs="keep")


@pytest.mark.parametrize("cores", [(1, 1), (3, 4), (5, 5), (6, 3)])
def test_k_core_matches_the_slow_reference_and_is_a_core(cores):
    rng = np.random.default_rng(sum(cores))
    users = rng.integers(0, 50, 700)
    items = (rng.zipf(1.6, 700) - 1) % 40  # skewed: many small items, a few big ones
    keep, rounds = k_core_mask(users, items, *cores)
    rows = [(u, i, 0.0, float(r)) for r, (u, i) in enumerate(zip(users.tolist(), items.tolist()))]
    expected = slow_kcore(rows, *cores)
    assert [r[3] for r in expected] == np.flatnonzero(keep).astype(float).tolist()
    for column, core in ((users, cores[0]), (items, cores[1])):
        counts = np.bincount(column[keep])
        assert (counts[counts > 0] >= core).all()
    assert (rounds > 0) == (len(expected) < len(rows))


def test_reindexing_is_first_appearance_in_file_order(tmp_path):
    path = tmp_path / "inter.tsv"
    path.write_text("item\tuser\n" + "".join(f"i{i}\tu{u}\n" for u, i in [(2, 9), (1, 9), (2, 3), (1, 3), (1, 7)]))
    inter = clean_interactions(read_interaction_table(path), user_core=1, item_core=1)
    assert inter.user_ids.tolist() == ["u2", "u1"] and inter.item_ids.tolist() == ["i9", "i3", "i7"]
    assert inter.users.tolist() == [0, 1, 0, 1, 1] and inter.items.tolist() == [0, 0, 1, 1, 2]


def test_missing_fields_are_dropped_and_gzip_is_read(tmp_path):
    path = tmp_path / "ratings.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("u1,i1,5.0,100\n,i2,4.0,101\nu2,,3.0,102\nu3,i3,,103\nu4,i4,2.0,\n\nu5,i5,1.0,104\n")
    raw = read_amazon_ratings(path)
    assert raw.rows_missing == 3  # blank user, item, timestamp; a blank rating is kept
    assert list(raw.user_ids) == ["u1", "u3", "u5"] and np.isnan(raw.ratings[1])


def test_named_table_columns_iso_dates_and_aliases(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("reviewerID,asin,overall,date\nu1,i1,5,2014-01-02T00:00:00\nu1,i2,4,1388707200\n")
    raw = read_interaction_table(path, timestamp_column="date", rating_column="overall")
    assert raw.timestamps.tolist() == [1388620800.0, 1388707200.0]
    assert raw.ratings.tolist() == [5.0, 4.0]


def test_a_byte_order_mark_is_dropped_from_plain_and_gzipped_tables(tmp_path):
    text = "\ufeffuser,item,timestamp\nu1,i1,100\n"
    (tmp_path / "log.csv").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "log.csv.gz", "wt", encoding="utf-8") as handle:
        handle.write(text)
    for name in ("log.csv", "log.csv.gz"):
        raw = read_interaction_table(tmp_path / name)
        assert list(raw.user_ids) == ["u1"] and list(raw.item_ids) == ["i1"], name


@pytest.mark.parametrize(
    "content, message",
    [
        ("u1,i1,5.0,100\nu2,i2,4.0\n", "ratings.csv:2: expected 4 comma-separated fields"),
        ("u1,i1,5.0,100\nu2,i2,4.0,100,7\n", "ratings.csv:2: expected 4"),
        ("u1,i1,5.0,100\nu2,i2,good,101\n", "ratings.csv:2: rating 'good' is not a finite number"),
        ("u1,i1,5.0,100\n\nu2,i2,4.0,yesterday\n", "ratings.csv:3: timestamp 'yesterday'"),
        ('u1,i1,5.0,100\nu2,"i2,4.0,101\n', "ratings.csv:2: malformed CSV row"),
        ("", "holds no interaction rows"),
    ],
)
def test_malformed_ratings_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "ratings.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        read_amazon_ratings(path)


def test_named_table_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("who,what\nu1,i1\n")
    with pytest.raises(DatasetError, match=r"t.csv:1: no user column"):
        read_interaction_table(path)
    path.write_text("user,item\nu1,i1\nu2\n")
    with pytest.raises(DatasetError, match=r"t.csv:3: expected 2 fields"):
        read_interaction_table(path)
    with pytest.raises(DatasetError, match=r"no column named 'when'"):
        read_interaction_table(path, timestamp_column="when")
    (tmp_path / "bin.csv").write_bytes(b"user,item\n\xff\xfe,i1\n")
    with pytest.raises(DatasetError, match=r"bin.csv: not UTF-8"):
        read_interaction_table(tmp_path / "bin.csv")
    # A quoted id with a tab would misalign the tab-separated id maps written later.
    path.write_text('user,item\nu1,i1\n"u\t2",i1\n')
    with pytest.raises(DatasetError, match=r"t.csv:3: the user id 'u\\t2' holds a tab or line break"):
        read_interaction_table(path)


def test_empty_after_k_core_is_an_error(tmp_path):
    path = write_ratings(tmp_path / "ratings.csv", [("u1", "i1", 5.0, 1), ("u1", "i2", 5.0, 2), ("u2", "i1", 4.0, 3)])
    with pytest.raises(DatasetError, match=r"ratings.csv: no interactions are left after the k-core"):
        clean_interactions(read_amazon_ratings(path))


@pytest.mark.skipif(not BABY.is_file(), reason="the shared Baby graph (../shared/data/baby-graph) is not here")
def test_real_baby_graph_counts_and_split_structure():
    raw = read_interaction_table(BABY, user_column="userID", item_column="itemID", timestamp_column="timestamp")
    inter = clean_interactions(raw)
    assert (inter.num_users, inter.num_items, len(inter.users)) == (19445, 7050, 160792)
    assert inter.stats["kcore_rows_removed"] == 0 and inter.stats["duplicate_rows"] == 0
    table = np.loadtxt(BABY, skiprows=1, dtype=np.int64)
    # Re-indexing is a bijection onto the file's ids (its users are listed in id order).
    assert np.array_equal(inter.user_ids.astype(int)[inter.users], table[:, 0])
    assert np.array_equal(inter.item_ids.astype(int)[inter.items], table[:, 1])
    # The per-user split gives every user exactly the file's train/valid/test counts.
    order, labels = split_per_user(inter.users, 999)
    ours = np.zeros((inter.num_users, 3), int)
    np.add.at(ours, (inter.users[order], labels), 1)
    theirs = np.zeros((inter.num_users, 3), int)
    np.add.at(theirs, (inter.user_ids.astype(int).argsort()[table[:, 0]], table[:, 4]), 1)
    assert np.array_equal(ours, theirs)
    assert ours.sum(axis=0).tolist() == [118551, 21682, 20559]
