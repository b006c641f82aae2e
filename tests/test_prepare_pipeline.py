"""The whole preparation: raw files in the real formats -> a loadable MMRec folder.

Covers the Amazon command (ratings CSV + gzipped literal-dict metadata + binary image
features), a user's own folder (interactions + item texts + PNG images + ResNet weights),
resuming after an interruption, refusing to overwrite, every bad input leaving nothing
behind, and the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prepare_raw import (
    amazon_rows,
    metadata_record,
    random_resnet_weights,
    write_image_features,
    write_metadata,
    write_pngs,
    write_ratings,
)
from test_prepare_interactions import slow_clean

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.data import DatasetError, load_mmrec
from mirrorgrad_jax.graph import build_user_graph
from mirrorgrad_jax.prepare import amazon_sentence, pipeline

QUIET = {"progress": False, "verbose": False}


def _has_minilm() -> bool:
    try:
        from mirrorgrad_jax.prepare import minilm

        minilm.check_text_extra()
        minilm.find_minilm_model()
    except ImportError:
        return False
    return True


class FakeEncoder:
    """Stands in for MiniLM where a test is about the pipeline, not the encoder."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def encode(self, sentences, *, progress=False, desc=""):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted while encoding")
        self.calls += 1
        return np.array([[len(s), sum(map(ord, s)) % 97, 1.0] for s in sentences], np.float32)


@pytest.fixture
def fake_text(monkeypatch):
    encoder = FakeEncoder()
    monkeypatch.setattr(pipeline, "_text_model_identity", lambda options: "fake-encoder")
    monkeypatch.setattr("mirrorgrad_jax.prepare.minilm.shared_encoder", lambda *a, **k: encoder)
    return encoder


@pytest.fixture
def amazon(tmp_path):
    """Raw Amazon files: every 5-core item has metadata; two items have no image record."""
    rows = amazon_rows(n_users=45, n_items=22, seed=3)
    ratings = write_ratings(tmp_path / "ratings_Baby.csv", rows)
    expected, users, items = slow_clean([(u, i, r, float(t)) for u, i, r, t in rows])
    all_items = sorted({r[1] for r in rows})
    records = {asin: metadata_record(asin, k) for k, asin in enumerate(all_items)}
    meta = write_metadata(tmp_path / "meta_Baby.json.gz", list(records.values()) + [metadata_record("B0UNRATED1", 99)])
    with_image = [asin for asin in all_items if asin not in items[:2]] + ["B0UNRATED1"]
    features, vectors = write_image_features(tmp_path / "image_features_Baby.b", with_image)
    return {
        "root": tmp_path, "ratings": ratings, "meta": meta, "features": features, "expected": expected,
        "users": users, "items": items, "records": records, "vectors": dict(zip(with_image, vectors)),
    }  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_amazon_end_to_end(amazon, fake_text):
    out = amazon["root"] / "data" / "baby"
    result = pipeline.prepare_amazon(
        amazon["ratings"], out, meta=amazon["meta"], image_features=amazon["features"], **QUIET
    )
    assert result.path == out and result.steps_run == ("interactions", "split", "text", "image", "write")
    assert not (out.parent / ".baby.prepare-work").exists()
    ds = load_mmrec(out, verbose=False)
    expected, users, items = amazon["expected"], amazon["users"], amazon["items"]
    assert (ds.num_users, ds.num_items) == (len(users), len(items))
    assert len(ds.train) + len(ds.valid) + len(ds.test) == len(expected)

    # The .inter is the reference's: all columns, rows grouped by user, train/valid/test.
    lines = (out / "baby.inter").read_text().splitlines()
    assert lines[0].split("\t") == ["userID", "itemID", "rating", "timestamp", "x_label"]
    table = [line.split("\t") for line in lines[1:]]
    written = sorted((int(u), int(i), float(r), float(t)) for u, i, r, t, _ in table)
    assert written == sorted(expected)
    assert [int(row[0]) for row in table] == sorted(int(row[0]) for row in table)
    assert (out / "i_id_mapping.csv").read_text().splitlines() == ["asin\titemID"] + [
        f"{a}\t{k}" for k, a in enumerate(items)
    ]
    assert (out / "u_id_mapping.csv").read_text().splitlines()[1] == f"{users[0]}\t0"

    # Text rows follow the item order; images are the file's bytes, missing ones the mean.
    sentences = [amazon_sentence(amazon["records"][asin]) for asin in items]
    np.testing.assert_array_equal(ds.features["text"], FakeEncoder().encode(sentences))
    image = ds.features["image"]
    for k, asin in enumerate(items[2:], start=2):
        assert image[k].tobytes() == amazon["vectors"][asin].tobytes()
    mean = np.mean([amazon["vectors"][a].astype(np.float64) for a in items[2:]], axis=0).astype(np.float32)
    np.testing.assert_array_equal(image[:2], np.stack([mean, mean]))
    assert (out / "missed_img_itemIDs.csv").read_text() == "0\n1\n"

    assert len(list(out.glob("user_graph*"))) == 1  # in whatever format write_mmrec uses
    graph = build_user_graph(ds.train, ds.num_users)
    assert all(np.array_equal(ds.user_graph[u][0], graph[u][0]) for u in range(ds.num_users))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_interactions"] == len(expected) and summary["features"]["image"]["filled_with_mean"] == 2
    assert summary["split"]["train"] == len(ds.train) and summary["cold_items"] == ds.num_items - len(
        ds.train_item_pool()
    )
    assert summary["cleaning"]["kcore_rows_removed"] > 0


@pytest.mark.skipif(not _has_minilm(), reason="the text extra or the MiniLM weights are not installed")
def test_amazon_text_features_are_minilm_embeddings(amazon):
    from mirrorgrad_jax.prepare import minilm

    out = amazon["root"] / "baby"
    pipeline.prepare_amazon(amazon["ratings"], out, meta=amazon["meta"], text_batch_size=8, **QUIET)
    ds = load_mmrec(out, verbose=False)
    sentences = [amazon_sentence(amazon["records"][asin]) for asin in amazon["items"]]
    expected = minilm.encode_sentences(sentences, batch_size=8)
    assert ds.features["text"].shape == (len(amazon["items"]), 384)
    np.testing.assert_allclose(ds.features["text"], expected, atol=1e-6)


def test_interrupted_run_resumes_and_gives_identical_files(amazon, monkeypatch, fake_text):
    monkeypatch.setattr(pipeline, "_TEXT_CHUNK", 4)
    fake_text.fail_after = 2  # the third text chunk is interrupted
    out = amazon["root"] / "baby"
    args = dict(meta=amazon["meta"], image_features=amazon["features"], **QUIET)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare_amazon(amazon["ratings"], out, **args)
    assert not out.exists()
    work = amazon["root"] / ".baby.prepare-work"
    assert (work / "interactions.json").is_file() and (work / "split.json").is_file()

    fake_text.fail_after, fake_text.calls = None, 0
    resumed = pipeline.prepare_amazon(amazon["ratings"], out, **args)
    assert resumed.steps_reused == ("interactions", "split")
    assert resumed.steps_run == ("text", "image", "write")
    n_chunks = -(-len(amazon["items"]) // 4)
    assert fake_text.calls == n_chunks - 2  # the two finished chunks were kept

    fresh = pipeline.prepare_amazon(amazon["ratings"], amazon["root"] / "fresh" / "baby", **args)
    assert fresh.steps_reused == ()
    assert _files(out) == _files(fresh.path)


def test_changed_options_are_not_reused(amazon):
    out = amazon["root"] / "baby"
    work = amazon["root"] / ".baby.prepare-work"
    work.mkdir()
    (work / "interactions.json").write_text(json.dumps({"fingerprint": "stale", "info": {}}))
    np.savez(work / "interactions.npz", users=np.zeros(1))
    result = pipeline.prepare_amazon(amazon["ratings"], out, k_core=3, **QUIET)
    assert result.steps_reused == () and result.summary["cleaning"]["user_core"] == 3


def test_user_folder_end_to_end_with_temporal_split(tmp_path, fake_text):
    pytest.importorskip("PIL")  # the images extra
    rows = amazon_rows(n_users=30, n_items=15, seed=5)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "interactions.csv").write_text(
        "customer_id,product_id,stars,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    )
    items = sorted({r[1] for r in rows})
    (tmp_path / "shop" / "items.csv").write_text(
        "product_id,title,description\n" + "".join(f"{i},Toy {i},Fun\n" for i in items[1:])
    )
    write_pngs(tmp_path / "shop" / "images", items[2:], size=(36, 36))
    np.savez(tmp_path / "resnet18.npz", **random_resnet_weights())
    out = tmp_path / "data" / "shop"
    result = pipeline.prepare_folder(
        out, interactions=tmp_path / "shop" / "interactions.csv", items=tmp_path / "shop" / "items.csv",
        images=tmp_path / "shop" / "images", image_weights=tmp_path / "resnet18.npz",
        split="temporal", image_resize=36, image_crop=32, **QUIET,
    )  # fmt: skip
    ds = load_mmrec(out, verbose=False)
    assert ds.features["image"].shape == (ds.num_items, 8) and ds.features["text"].shape == (ds.num_items, 3)
    s = result.summary
    assert s["split"]["method"] == "temporal" and s["features"]["text"]["filled_with_mean"] <= 1
    assert s["features"]["image"]["items_with_own"] == sum(i in items[2:] for i in ds_items(out))
    header = (out / "shop.inter").read_text().splitlines()[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    assert (out / "i_id_mapping.csv").read_text().startswith("item_id\titemID\n")


def ds_items(out: Path) -> list[str]:
    return [line.split("\t")[0] for line in (out / "i_id_mapping.csv").read_text().splitlines()[1:]]


def test_output_folder_with_files_is_refused_unless_overwrite(amazon):
    out = amazon["root"] / "baby"
    out.mkdir()
    (out / "other.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(DatasetError, match=r"baby already holds files \(other.inter\); pass --overwrite"):
        pipeline.prepare_amazon(amazon["ratings"], out, **QUIET)
    # --overwrite replaces only a folder an earlier prepare wrote: this one it did not.
    with pytest.raises(DatasetError, match=r"baby holds files \(other.inter\) that `mirrorgrad prepare` did not write"):
        pipeline.prepare_amazon(amazon["ratings"], out, overwrite=True, **QUIET)
    assert _files(out) == {"other.inter": b"userID\titemID\tx_label\n"}
    (out / "other.inter").unlink()
    pipeline.prepare_amazon(amazon["ratings"], out, **QUIET)  # an empty folder is fine
    pipeline.prepare_amazon(amazon["ratings"], out, overwrite=True, **QUIET)
    assert (out / "baby.inter").is_file()
    with pytest.raises(DatasetError, match="lies inside the output folder"):
        pipeline.prepare_amazon(out / "baby.inter", out, overwrite=True, **QUIET)


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_cli_overwrite_refuses_a_folder_prepare_did_not_write_and_keeps_every_file(amazon, tmp_path, capsys):
    # A parent folder holding other datasets and files of its own: --out names it by mistake.
    data = tmp_path / "data"
    first = ["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--k-core", "5", "--quiet"]
    assert main([*first, "--out", str(data / "baby")]) == 0
    (data / "notes.txt").write_text("my notes\n")
    (data / "sports").mkdir()
    (data / "sports" / "sports.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    (data / "runs" / "combo0").mkdir(parents=True)
    (data / "runs" / "combo0" / "results.json").write_text("{}")
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main([*first, "--out", str(data), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("mirrorgrad prepare: error: ") and "did not write" in err and ".mirrorgrad-prepare" in err
    assert _tree(tmp_path) == before  # nothing deleted, nothing written (no work folder either)


def test_cli_overwrite_replaces_a_folder_an_earlier_prepare_wrote(amazon, tmp_path, capsys):
    out = tmp_path / "baby"
    argv = ["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--out", str(out), "--quiet"]
    assert main([*argv, "--k-core", "5"]) == 0
    marker = json.loads((out / ".mirrorgrad-prepare").read_text())
    assert marker["format"] == 1
    first = json.loads((out / "summary.json").read_text())
    assert main([*argv, "--k-core", "3", "--overwrite"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert first["cleaning"]["user_core"] == 5 and second["cleaning"]["user_core"] == 3
    assert (out / ".mirrorgrad-prepare").is_file() and load_mmrec(out, verbose=False).num_items == second["num_items"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the work folder is gone


def _bad_amazon_inputs(amazon: dict) -> dict:
    root = amazon["root"]
    bad_rating = root / "bad_ratings.csv"
    bad_rating.write_text(amazon["ratings"].read_text() + "A1,B2,5.0\n")
    bad_meta = write_metadata(root / "bad_meta.json.gz", list(amazon["records"].values()))
    import gzip

    with gzip.open(bad_meta, "at") as handle:
        handle.write("['not', 'a', 'dict']\n")
    short_meta = write_metadata(root / "short_meta.json.gz", [amazon["records"][a] for a in amazon["items"][1:]])
    truncated = root / "cut.b"
    truncated.write_bytes(amazon["features"].read_bytes()[:-7])
    tiny = write_ratings(root / "tiny.csv", [("u1", "i1", 5.0, 1), ("u2", "i1", 4.0, 2)])
    n_lines = len(amazon["ratings"].read_text().splitlines())
    return {
        "malformed row": (
            {"ratings": bad_rating},
            rf"bad_ratings.csv:{n_lines + 1}: expected 4 comma-separated fields",
        ),
        "meta line not a dict": (
            {"meta": bad_meta},
            rf"bad_meta.json.gz:{len(amazon['records']) + 1}: expected one dict literal",
        ),
        "truncated image file": (
            {"image_features": truncated},
            r"cut.b is truncated: record \d+ \(at byte offset \d+\)",
        ),
        "unknown ASIN": (
            {"meta": short_meta},
            rf"short_meta.json.gz: no record for 1 of the .* ASIN {amazon['items'][0]}",
        ),
        "empty after k-core": ({"ratings": tiny}, r"tiny.csv: no interactions are left after the k-core"),
        "missing file": ({"meta": root / "nope.json.gz"}, r"nope.json.gz does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed row",
        "meta line not a dict",
        "truncated image file",
        "unknown ASIN",
        "empty after k-core",
        "missing file",
    ],
)
def test_bad_amazon_input_names_file_and_line_and_writes_nothing(amazon, fake_text, case):
    change, message = _bad_amazon_inputs(amazon)[case]
    args = {"ratings": amazon["ratings"], "meta": None, "image_features": None, **change}
    out = amazon["root"] / "out" / "baby"
    with pytest.raises(DatasetError, match=message):
        pipeline.prepare_amazon(args.pop("ratings"), out, **args, **QUIET)
    assert not out.exists()
    work = out.parent / ".baby.prepare-work"
    # Steps finished before the bad input stay for a rerun; a first-step failure leaves nothing.
    if case in ("malformed row", "empty after k-core", "missing file"):
        assert not work.exists()
    else:
        assert not (work / "dataset").exists() and not list(work.glob("text.*")) and not list(work.glob("image.*"))


def test_bad_user_folder_inputs(tmp_path, fake_text):
    pytest.importorskip("PIL")  # the images extra
    rows = amazon_rows(n_users=30, n_items=15, seed=6)
    inter = tmp_path / "inter.tsv"
    inter.write_text("user\titem\n" + "".join(f"{u}\t{i}\n" for u, i, _, _ in rows))
    items = tmp_path / "items.csv"
    items.write_text("item,text\nB000000001,ok\nNOSUCHITEM,hello\n")
    out = tmp_path / "mine"
    with pytest.raises(DatasetError, match=r"items.csv:3: item 'NOSUCHITEM' does not occur in .*inter.tsv"):
        pipeline.prepare_folder(out, interactions=inter, items=items, **QUIET)
    items.write_text("item,text\nB000000001,ok\n")
    with pytest.raises(DatasetError, match=r"items.csv: no text for \d+ of the \d+ items"):
        pipeline.prepare_folder(out, interactions=inter, items=items, missing_text="error", **QUIET)
    write_pngs(tmp_path / "images", ["B000000001", "ghost"])
    np.savez(tmp_path / "w.npz", **random_resnet_weights())
    with pytest.raises(DatasetError, match=r"ghost.png: item 'ghost' does not occur"):
        pipeline.prepare_folder(
            out, interactions=inter, images=tmp_path / "images", image_weights=tmp_path / "w.npz", **QUIET
        )
    with pytest.raises(DatasetError, match=r"needs the weights of a pretrained ResNet"):
        pipeline.prepare_folder(out, interactions=inter, images=tmp_path / "images", **QUIET)
    with pytest.raises(DatasetError, match=r"the temporal split needs one"):
        pipeline.prepare_folder(out, interactions=inter, split="temporal", **QUIET)
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# The command line: `mirrorgrad prepare ...` through mirrorgrad_jax.cli.main.
# ---------------------------------------------------------------------------------------


def test_cli_amazon_and_folder(amazon, tmp_path, capsys):
    pytest.importorskip("PIL")  # the images extra
    out = tmp_path / "cli" / "baby"
    code = main(["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--image-features", str(amazon["features"]),
                  "--out", str(out), "--k-core", "5", "--quiet"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip() == f"wrote {out}"
    assert load_mmrec(out, verbose=False).features["image"].shape[1] == 4096

    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "interactions.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in amazon_rows(seed=7)))
    write_pngs(shop / "images", ["B000000001"])
    code = main(["prepare", "folder", str(shop), "--out", str(tmp_path / "shop-data"), "--no-user-graph", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and "images is left out; pass --image-weights" in captured.err
    assert not list((tmp_path / "shop-data").glob("user_graph*"))
    assert load_mmrec(tmp_path / "shop-data", verbose=False).user_graph is None


def test_cli_repeated_pairs_count_toward_the_k_core_unless_dropped(tmp_path, capsys):
    # A 5-core catalogue, plus user "Z" with four distinct items, one of them rated again
    # later: five rows, four distinct pairs. The reference's 5-core keeps Z; counting each
    # pair once drops Z.
    rows = amazon_rows(seed=7)
    items = sorted({i for _, i, _, _ in rows})[:4]
    extra = [("Z", item, 5.0, 1_400_000_000 + k) for k, item in enumerate(items)] + [("Z", items[0], 4.0, 1_500_000_000)]
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "interactions.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, _, t in rows + extra))
    users = {}
    for mode in ("count", "drop", None):
        out = tmp_path / f"data-{mode}"
        argv = ["prepare", "folder", str(shop), "--out", str(out), "--no-user-graph", "--quiet"]
        assert main(argv + (["--repeated-pairs", mode] if mode else [])) == 0
        users[mode] = load_mmrec(out, verbose=False).num_users
    assert users["count"] == users["drop"] + 1 and users[None] == users["count"]  # count is the default
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["prepare", "folder", str(shop), "--out", str(tmp_path / "bad"), "--repeated-pairs", "keep"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'keep'" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_a_user_left_with_two_items_once_repeats_merge_is_named_with_the_cause(tmp_path, capsys):
    # User "Z" rates two items five times in all: the 5-core keeps Z (repeats count, as in the
    # reference), merging the repeats leaves two rows, and the per-user split needs three.
    # The error says why and what to pass, in one line; nothing is written.
    rows = amazon_rows(seed=7)
    items = sorted({i for _, i, _, _ in rows})[:2]
    extra = [("Z", items[k % 2], 5.0, 1_400_000_000 + k) for k in range(5)]
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "interactions.csv").write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, _, t in rows + extra))
    out = tmp_path / "data"
    code = main(["prepare", "folder", str(shop), "--out", str(out), "--no-user-graph", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "count toward the k-core but become one row each" in err and "--repeated-pairs drop" in err
    assert not out.exists()
    assert main(["prepare", "folder", str(shop), "--out", str(out), "--no-user-graph", "--quiet", "--repeated-pairs", "drop"]) == 0


def test_cli_bad_input_is_one_line_and_exit_2(amazon, tmp_path, capsys):
    bad = tmp_path / "r.csv"
    bad.write_text("u1,i1,5.0,100\nu2,i2\n")
    out = tmp_path / "o"
    assert main(["prepare", "amazon", "--ratings", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mirrorgrad prepare: error: ") and "r.csv:2:" in err
    assert not out.exists()
    (out / "x").mkdir(parents=True)
    assert main(["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--out", str(out), "--quiet"]) == 2
    assert "already holds files (x)" in capsys.readouterr().err
    assert (
        main(["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--out", str(tmp_path / "p"), "--k-core", "0"])
        == 2
    )
    assert "k_core must be an integer in [1, 2**31)" in capsys.readouterr().err


def test_cli_missing_text_extra_is_one_line(amazon, tmp_path, capsys, monkeypatch):
    def missing() -> None:
        raise ImportError("the text encoder needs tokenizers; install the encoder with: ...")

    monkeypatch.setattr("mirrorgrad_jax.prepare.minilm.check_text_extra", missing)
    argv = ["prepare", "amazon", "--ratings", str(amazon["ratings"]), "--meta", str(amazon["meta"])]
    assert main([*argv, "--out", str(tmp_path / "t"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs tokenizers" in err and not (tmp_path / "t").exists()


def test_cli_prepare_warns_when_the_catalogue_is_smaller_than_the_largest_cutoff(tmp_path, capsys):
    shop = tmp_path / "shop"
    shop.mkdir()
    rows = amazon_rows(n_users=45, n_items=22, seed=3)
    (shop / "interactions.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in rows))
    out = tmp_path / "shop-data"
    assert main(["prepare", "folder", str(shop), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    num_items = load_mmrec(out, verbose=False).num_items
    assert num_items < 50
    warnings = [line for line in captured.err.splitlines() if "fewer items than the largest ranking cut-off" in line]
    assert len(warnings) == 1 and f"{num_items} items" in warnings[0], captured.err
    # A catalogue of 50 items or more says nothing.
    rows = amazon_rows(n_users=120, n_items=60, per_user=20, seed=4)
    (shop / "interactions.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in rows))
    assert main(["prepare", "folder", str(shop), "--out", str(tmp_path / "big"), "--quiet"]) == 0
    assert load_mmrec(tmp_path / "big", verbose=False).num_items >= 50
    assert "ranking cut-off" not in capsys.readouterr().err


def test_the_prepare_warning_uses_the_trainers_largest_default_cutoff():
    from mirrorgrad_jax.evaluation import DEFAULT_TOPK
    from mirrorgrad_jax.prepare import output

    assert output.LARGEST_DEFAULT_CUTOFF == max(DEFAULT_TOPK)


def test_prepare_folder_reads_named_columns_and_splits_by_time_under_its_own_name(tmp_path, capsys):
    """--user-column, --item-column, --rating-column, --timestamp-column, --name and --split temporal,
    through the command line on a ';'-separated log: the columns are read by name, the set is named
    as asked, and every training row is no later than every test row."""
    import csv

    from mirrorgrad_jax.cli import main

    src = tmp_path / "src"
    src.mkdir()
    rows = [(f"u{u}", f"i{(u + k) % 9}", 1 + (u * 6 + k) % 5, 1000 + (u * 6 + k) * 37 % 101) for u in range(12) for k in range(6)]
    (src / "log.csv").write_text("when;stars;iid;uid\n" + "".join(f"{t};{r};{i};{u}\n" for u, i, r, t in rows))  # columns in another order
    out = tmp_path / "out"
    argv = ["prepare", "folder", str(src), "--interactions", str(src / "log.csv"), "--delimiter", ";", "--user-column", "uid",
            "--item-column", "iid", "--rating-column", "stars", "--timestamp-column", "when", "--name", "shop",
            "--split", "temporal", "--out", str(out), "--no-user-graph", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "shop" and summary["split"]["method"] == "temporal" and summary["num_interactions"] == len(rows)
    with open(out / "shop.inter", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert sorted(float(r["rating"]) for r in table) == sorted(float(r) for _, _, r, _ in rows)
    train = [int(float(r["timestamp"])) for r in table if r["x_label"] == "0"]
    test = [int(float(r["timestamp"])) for r in table if r["x_label"] == "2"]
    assert train and test and max(train) <= min(test), (max(train), min(test))
