"""Item text: the Amazon metadata file, a user's item table, and the reference's sentence rule.

The Amazon metadata file has one record per line, each a Python dict display (single
quotes, ``None``...) in the 2014 files or a JSON object in later ones, usually gzipped.
:func:`parse_record` reads one line without executing anything: it parses the line with
:mod:`ast`, checks that the whole line is one dict display and only then evaluates it with
:func:`ast.literal_eval` (literals only); JSON lines with ``true``/``false``/``null`` go
through :mod:`json`.

:func:`amazon_sentence` is the reference's item sentence: title, brand, the words of the
first category path, and the description, separated by spaces, with newlines turned
into spaces and a missing field as a single blank.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare.files import (
    find_column,
    guess_delimiter,
    iter_rows,
    open_text,
)

__all__ = [
    "REFERENCE_NA_STRINGS",
    "amazon_sentence",
    "iter_metadata",
    "parse_record",
    "read_amazon_metadata",
    "read_item_table",
    "sentence_from_fields",
]

#: Field values that the reference's CSV round trip (``DataFrame.to_csv`` then
#: ``read_csv`` with pandas 2.0's defaults, ``keep_default_na=True``) turned into missing
#: values: exactly pandas 2.0's default ``na_values`` set, as its ``read_csv`` documentation
#: lists it. ``"None"`` joined the set in pandas 2.0 (pandas-dev/pandas#52493 shows
#: ``read_csv`` reading the word as NaN from 2.0.0 on). A title, brand or description whose
#: WHOLE value is one of them became a blank in the reference's sentences; the comparison
#: is exact (``"none "`` or ``"Nonesuch"`` stay), as pandas compares a field's whole text.
REFERENCE_NA_STRINGS: frozenset[str] = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})  # fmt: skip

_BLANK = " "


_LITERAL_NODES = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant, ast.UnaryOp, ast.unaryop, ast.expr_context)


def _first_non_literal(node: ast.AST) -> str:
    for child in ast.walk(node):
        if not isinstance(child, _LITERAL_NODES):
            return f"a {type(child).__name__} expression at column {getattr(child, 'col_offset', 0) + 1}"
    return "a value literal_eval cannot build"


def parse_record(line: str, source: str | os.PathLike = "<text>", line_no: int = 0) -> dict[str, Any]:
    """Parses one metadata line (a Python dict display or a JSON object) safely.

    Args:
        line: The line's text.
        source: File name for error messages.
        line_no: Line number for error messages.

    Returns:
        The record as a dict.

    Raises:
        DatasetError: the line is not exactly one dict of literals (``file:line``).
    """
    where = f"{source}:{line_no}"
    text = line.strip()
    try:  # JSON first: a JSON line read by Python's rules would keep "\/" and split "\ud83d\ude00"
        record = json.loads(text)
    except (ValueError, RecursionError):
        record = None
    if isinstance(record, dict):
        return _checked_text(record, where)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        raise DatasetError(f"{where}: not a dict literal ({type(err).__name__}: {err})") from None
    if not isinstance(tree.body, ast.Dict):
        kind = type(tree.body).__name__
        raise DatasetError(f"{where}: expected one dict literal per line, found a {kind} expression")
    try:
        record = ast.literal_eval(tree.body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DatasetError(f"{where}: the dict holds {_first_non_literal(tree.body)}, not only literals") from None
    return _checked_text(record, where)


def _checked_text(record: dict[str, Any], where: str) -> dict[str, Any]:
    """``record``, once every string in it is text that UTF-8 can hold (a lone surrogate such
    as ``\ud83d`` is not, and would stop the text encoder in the middle of its work)."""
    stack: list[Any] = [record]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise DatasetError(f"{where}: a string holds {value[err.start:err.end]!r}, a lone surrogate, which is not text") from None
    return record


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of a (gzipped) text file, with file:line read errors."""
    line_no = 0
    try:
        with open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                yield line_no, line
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}:{line_no + 1}: not UTF-8 text ({err.reason})") from None
    except (EOFError, OSError) as err:
        raise DatasetError(f"{path}:{line_no + 1}: cannot be read to the end ({err})") from None


def iter_metadata(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, record)`` for every non-blank line of a metadata file.

    Raises:
        DatasetError: a line that is not a dict literal, a file that is not UTF-8 or a
            truncated gzip stream; the message names the file and the line.
    """
    path = Path(path)
    for line_no, line in _lines(path):
        if line.strip():
            yield line_no, parse_record(line, path, line_no)


# The Amazon dumps write the ASIN first: {'asin': '0000031852', 'title': ...}.
_LEADING_ASIN = re.compile(r"""\s*\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]*)\2\s*[,}]""")


def read_amazon_metadata(
    path: str | os.PathLike,
    wanted: Iterable[str],
    *,
    check_all: bool = False,
    progress: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Reads the metadata records of the ``wanted`` ASINs; other records are skipped.

    A category's file holds far more items than its k-core, and parsing a line costs
    about 0.3 ms, so a line that starts with the ASIN of an unwanted item is only checked
    to be one ``{...}`` line; every other line is parsed in full (``check_all`` parses
    all of them).

    Args:
        path: The metadata file (``meta_<Category>.json.gz``).
        wanted: ASINs whose records are returned.
        check_all: Parse and check every line, wanted or not.
        progress: Optional wrapper of the line iterator (a progress bar).

    Returns:
        ``(records, lines)``: ``records[asin]`` is the record of a wanted ASIN and
        ``lines[asin]`` its line number. ASINs without a record are absent.

    Raises:
        DatasetError: a malformed line, a record without an ``asin`` field, or a wanted
            ASIN with two records (file and lines named).
    """
    path = Path(path)
    wanted = set(wanted)
    records: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    stream: Iterator[tuple[int, str]] = _lines(path)
    if progress is not None:
        stream = progress(stream)
    for line_no, line in stream:
        if not line.strip():
            continue
        if not check_all:
            leading = _LEADING_ASIN.match(line)
            if leading is not None and leading.group(3) not in wanted:
                if not line.rstrip().endswith("}"):
                    raise DatasetError(f"{path}:{line_no}: not a dict literal (the line does not end with '}}')")
                continue
        record = parse_record(line, path, line_no)
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DatasetError(f"{path}:{line_no}: the record has no 'asin' string")
        if asin not in wanted:
            continue
        if asin in records:
            raise DatasetError(
                f"{path}:{line_no}: a second record for ASIN {asin} (the first is on line {lines[asin]})"
            )
        records[asin] = record
        lines[asin] = line_no
    return records, lines


def _field_text(value: Any, na_strings: frozenset[str]) -> str:
    """A title/brand/description value as text; missing or NA-like values become a blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _BLANK
    if isinstance(value, (list, tuple)):  # later Amazon dumps store descriptions as lists
        value = " ".join(str(part) for part in value)
    text = str(value)
    return _BLANK if text in na_strings else text


def _category_words(categories: Any) -> list[str]:
    """Words of the first category path: ``[["Baby", "Feeding"], ...]`` gives Baby, Feeding."""
    if not isinstance(categories, (list, tuple)) or not categories:
        return []
    first = categories[0]
    if isinstance(first, (list, tuple)):
        return [str(word) for word in first]
    return [str(word) for word in categories]  # a flat list (later dumps' "category")


def sentence_from_fields(
    title: Any,
    brand: Any,
    categories: Any,
    description: Any,
    *,
    na_strings: frozenset[str] = frozenset({""}),
) -> str:
    """``title + " " + brand + " " + (each category word + " ") + description``.

    A missing (None, NaN, empty or NA-marker) title, brand or description counts as a
    single blank; newlines become spaces.
    """
    sentence = _field_text(title, na_strings) + " " + _field_text(brand, na_strings) + " "
    sentence += "".join(word + " " for word in _category_words(categories))
    sentence += _field_text(description, na_strings)
    return sentence.replace("\n", " ")


def amazon_sentence(record: Mapping[str, Any], *, na_strings: frozenset[str] = REFERENCE_NA_STRINGS) -> str:
    """The reference's text for one Amazon metadata record.

    ``title + " " + brand + " " + (each word of categories[0] + " ") + description``,
    newlines replaced by spaces. As in the reference (which round-tripped the records
    through a CSV file), a missing field, an empty one, or one that reads as a pandas
    NA marker (``"N/A"``, ``"NA"``, ``"None"``, ``"null"``... see :data:`REFERENCE_NA_STRINGS`)
    counts as a single blank; so an item without brand gives three spaces between its
    title and its first category word. Later dumps' ``category`` (a flat list) is used
    when ``categories`` is absent.

    Args:
        record: A parsed metadata record.
        na_strings: Values that count as missing.

    Returns:
        The sentence to encode.
    """
    categories = record.get("categories", record.get("category"))
    return sentence_from_fields(
        record.get("title"), record.get("brand"), categories, record.get("description"),
        na_strings=na_strings,
    )  # fmt: skip


def read_item_table(
    path: str | os.PathLike,
    *,
    item_column: str | None = None,
    delimiter: str | None = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """Reads a user's item table (CSV/TSV with a header) into one sentence per item.

    The item column is found by name (``item``, ``item_id``, ``asin``...). A ``text``
    column is used as the sentence when present; otherwise the sentence is built from
    whichever of ``title``, ``brand``, ``categories`` (a plain string, or words split on
    ``|``) and ``description`` exist, with the rule of :func:`sentence_from_fields`.

    Args:
        path: The table.
        item_column: Name of the item column.
        delimiter: Field separator; default from the extension, else the header.

    Returns:
        ``(sentences, lines)``: ``sentences[item_id]`` and the line it came from.

    Raises:
        DatasetError: no item column, a row whose field count differs from the
            header's, or an item listed twice (file and lines named).
    """
    path = Path(path)
    rows = iter_rows(path, delimiter or guess_delimiter(path))
    header = None
    for _, row in rows:
        if any(field.strip() for field in row):
            header = [name.strip() for name in row]
            break
    if header is None:
        raise DatasetError(f"{path} is empty")
    item_at = find_column(header, "item", item_column, path, True)
    lowered = [name.lower() for name in header]
    at = {
        name: lowered.index(name) if name in lowered else None
        for name in ("text", "title", "brand", "categories", "description")
    }
    if at["text"] is None and all(at[name] is None for name in ("title", "brand", "categories", "description")):
        raise DatasetError(
            f"{path}:1: no text column; name one 'text', or some of title, brand, categories, "
            f"description (columns: {', '.join(header)})"
        )
    sentences: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line_no, row in rows:
        if not any(field.strip() for field in row):
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}:{line_no}: expected {len(header)} fields like the header, got {len(row)}")
        item = row[item_at].strip()
        if not item:
            raise DatasetError(f"{path}:{line_no}: blank item id")
        if item in sentences:
            raise DatasetError(f"{path}:{line_no}: item {item!r} is listed again (first on line {lines[item]})")
        if at["text"] is not None:
            sentence = row[at["text"]].replace("\n", " ")
        else:
            title, brand, categories, description = (
                None if at[name] is None else row[at[name]] for name in ("title", "brand", "categories", "description")
            )
            words = [[w.strip() for w in categories.split("|") if w.strip()]] if categories else None
            sentence = sentence_from_fields(title, brand, words, description)
        sentences[item] = sentence
        lines[item] = line_no
    return sentences, lines
