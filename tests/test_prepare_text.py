"""Metadata parsing (safe, with file:line errors), the reference's sentence rule, item tables."""

from __future__ import annotations

import gzip

import pytest
from prepare_raw import metadata_record, write_metadata

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import (
    amazon_sentence,
    parse_record,
    read_amazon_metadata,
    read_item_table,
)


def test_parse_record_reads_python_and_json_dicts():
    assert parse_record("{'asin': 'B1', 'price': 3.5, 'x': None, 'c': [['A', 'B']]}") == {
        "asin": "B1", "price": 3.5, "x": None, "c": [["A", "B"]],
    }  # fmt: skip
    assert parse_record('{"asin": "B2", "ok": true, "gone": null}') == {"asin": "B2", "ok": True, "gone": None}
    # A JSON line is read by JSON's rules, even when Python's would also take it: "\/" is a
    # slash and a surrogate pair one character (Python's would keep the backslash and two
    # lone surrogates, which the text encoder cannot take).
    assert parse_record(r'{"title": "Smile \ud83d\ude00 A\/B"}') == {"title": "Smile \U0001F600 A/B"}
    assert parse_record("{'title': 'It\\'s \\xe9'}") == {"title": "It's \xe9"}  # Python's display: its own escapes


def test_a_lone_surrogate_is_refused_with_file_and_line():
    for line in (r'{"title": "half \ud83d"}', "{'title': 'half \\ud83d'}"):
        with pytest.raises(DatasetError, match=r"meta.json:3: a string holds '\\ud83d', a lone surrogate"):
            parse_record(line, "meta.json", 3)


@pytest.mark.parametrize(
    "line, message",
    [
        ("['asin', 'B1']", "expected one dict literal per line, found a List"),
        ("{'asin': 'B1'", "not a dict literal"),
        ("{'asin': __import__('os').getcwd()}", "the dict holds a Call expression at column 10"),
        ("(lambda: 1)()", "expected one dict literal per line, found a Call"),
        ("{'asin': 'B1'}; import os", "not a dict literal"),
    ],
)
def test_parse_record_refuses_anything_but_a_literal_dict(line, message):
    with pytest.raises(DatasetError, match=r"meta.json.gz:7: " + message):
        parse_record(line, "meta.json.gz", 7)


def test_parse_record_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(DatasetError):
        parse_record(f"{{'asin': open({str(marker)!r}, 'w').write('x')}}")
    assert not marker.exists()


def test_read_amazon_metadata_keeps_wanted_records_and_names_bad_lines(tmp_path):
    records = [metadata_record(f"B{k:09d}", k) for k in range(6)]
    path = write_metadata(tmp_path / "meta.json.gz", records)
    found, lines = read_amazon_metadata(path, ["B000000001", "B000000004", "B999999999"])
    assert set(found) == {"B000000001", "B000000004"} and lines == {"B000000001": 2, "B000000004": 5}
    assert found["B000000004"] == records[4]

    with gzip.open(path, "at") as handle:  # a later bad line is found even if unwanted
        handle.write("\n{'asin': 'B7', 'title': 'x',}\nnot a dict\n")
    with pytest.raises(DatasetError, match=r"meta.json.gz:9: not a dict literal"):
        read_amazon_metadata(path, ["B000000001"])


def test_read_amazon_metadata_errors(tmp_path):
    path = write_metadata(tmp_path / "meta.json.gz", [{"asin": "B1"}, {"title": "no asin"}])
    with pytest.raises(DatasetError, match=r"meta.json.gz:2: the record has no 'asin'"):
        read_amazon_metadata(path, ["B1"])
    path = write_metadata(tmp_path / "twice.json.gz", [{"asin": "B1"}, {"asin": "B2"}, {"asin": "B1"}])
    with pytest.raises(DatasetError, match=r"twice.json.gz:3: a second record for ASIN B1 \(the first is on line 1\)"):
        read_amazon_metadata(path, ["B1"])
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(gzip.compress("".join(f"{{'asin': 'B{k}'}}\n" for k in range(3000)).encode())[:-40])
    with pytest.raises(DatasetError, match=r"cut.json.gz:\d+: cannot be read to the end"):
        read_amazon_metadata(truncated, ["B1"])


def test_sentence_rule_matches_the_reference():
    full = {
        "title": "Cozy Crib Sheet", "brand": "Acme",
        "categories": [["Baby", "Nursery", "Bedding"], ["Baby", "Sale"]],
        "description": "Fits standard\ncribs.",
    }  # fmt: skip
    assert amazon_sentence(full) == "Cozy Crib Sheet Acme Baby Nursery Bedding Fits standard cribs."
    # A missing brand (absent, empty or a pandas NA marker) is one blank: three spaces in all.
    for brand in (None, "", "N/A", "NA", "null"):
        record = {**full, "brand": brand} if brand is not None else {k: v for k, v in full.items() if k != "brand"}
        assert amazon_sentence(record) == "Cozy Crib Sheet   Baby Nursery Bedding Fits standard cribs."
    no_description = {k: v for k, v in full.items() if k != "description"}
    assert amazon_sentence(no_description) == "Cozy Crib Sheet Acme Baby Nursery Bedding  "
    assert amazon_sentence({"categories": [["Baby"]]}) == "    Baby  "
    assert amazon_sentence({"title": "T", "brand": "B", "categories": []}) == "T B  "
    assert amazon_sentence({"title": "T", "brand": "B", "category": ["Baby", "Toys"], "description": ["a", "b"]}) == (
        "T B Baby Toys a b"
    )


def test_read_item_table(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('item,title,brand,categories,description\nx1,Mug,Acme,Kitchen|Cups,"Big\nmug"\nx2,Cap,,,\n')
    sentences, lines = read_item_table(path)
    assert sentences == {"x1": "Mug Acme Kitchen Cups Big mug", "x2": "Cap" + " " * 4}
    assert lines == {"x1": 2, "x2": 4}
    path.write_text("item_id\ttext\nx1\thello\nx1\tagain\n")
    with pytest.raises(DatasetError, match=r"items.csv:3: item 'x1' is listed again \(first on line 2\)"):
        read_item_table(path, delimiter="\t")
    path.write_text("item,colour\nx1,red\n")
    with pytest.raises(DatasetError, match=r"items.csv:1: no text column"):
        read_item_table(path)


def test_unwanted_lines_are_checked_cheaply_unless_check_all(tmp_path):
    path = write_metadata(tmp_path / "meta.json.gz", [{"asin": "B1", "title": "kept"}])
    with gzip.open(path, "at") as handle:
        handle.write("{'asin': 'B9', 'title': name_not_literal}\n")
    records, _ = read_amazon_metadata(path, ["B1"])
    assert records == {"B1": {"asin": "B1", "title": "kept"}}
    with pytest.raises(DatasetError, match=r"meta.json.gz:2: the dict holds a Name expression"):
        read_amazon_metadata(path, ["B1"], check_all=True)
    with pytest.raises(DatasetError, match=r"meta.json.gz:2: the dict holds a Name"):
        read_amazon_metadata(path, ["B9"])  # a wanted line is always parsed in full
    with gzip.open(path, "at") as handle:
        handle.write("{'asin': 'B8', 'title': 'cut off\n")
    with pytest.raises(DatasetError, match=r"meta.json.gz:3: not a dict literal \(the line does not end"):
        read_amazon_metadata(path, ["B1"])


# pandas 2.0's default NA strings (``read_csv``'s ``na_values``, ``keep_default_na=True``),
# written out here rather than read from the library, so that a missing entry is caught.
PANDAS_2_0_NA = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip


def test_reference_na_strings_are_exactly_pandas_2_0s_defaults():
    from mirrorgrad_jax.prepare.text import REFERENCE_NA_STRINGS

    assert REFERENCE_NA_STRINGS == frozenset(PANDAS_2_0_NA)


@pytest.mark.parametrize("value", PANDAS_2_0_NA)
@pytest.mark.parametrize("field", ["title", "brand", "description"])
def test_a_field_whose_whole_value_reads_as_na_is_blank(field, value):
    record = {"title": "T", "brand": "B", "categories": [["Baby", "Toys"]], "description": "D", field: value}
    expected = {"title": "  B Baby Toys D", "brand": "T   Baby Toys D", "description": "T B Baby Toys  "}[field]
    assert amazon_sentence(record) == expected


@pytest.mark.parametrize("value", ["none ", " None", "Nonesuch", "NONE", "none", "N/A ", "na", "Null", "NaN!", "<na>", "nil"])
def test_near_misses_of_the_na_strings_stay_as_written(value):
    record = {"title": "T", "brand": value, "categories": [["Baby"]], "description": "D"}
    assert amazon_sentence(record) == f"T {value} Baby D"
