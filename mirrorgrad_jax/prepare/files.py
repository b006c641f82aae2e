"""Reading delimited text files with errors that name the file and the line.

Small helpers shared by the interaction and item-table readers: transparent gunzip,
``csv`` rows with line numbers, a delimiter guess and header-name lookup.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from mirrorgrad_jax.data import DatasetError

__all__ = ["COLUMN_ALIASES", "find_column", "guess_delimiter", "iter_rows", "open_text"]

#: Header names recognised (case-insensitively) for each field of an interaction table.
COLUMN_ALIASES: Mapping[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "reviewerid", "uid", "customer_id"),
    "item": ("item", "item_id", "itemid", "asin", "iid", "product_id"),
    "rating": ("rating", "overall", "score", "stars"),
    "timestamp": ("timestamp", "time", "unixreviewtime", "ts", "date", "datetime"),
}


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Opens a UTF-8 text file, transparently gunzipping it (by its magic bytes); a leading byte-order mark is dropped either way."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(line_number, fields)`` of a delimited file, with file:line errors."""
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            last = 0  # a row may span lines (quoted newlines): report where the bad one starts
            try:
                for row in reader:
                    yield last + 1, row
                    last = reader.line_num
            except csv.Error as err:
                raise DatasetError(f"{path}:{last + 1}: malformed CSV row ({err})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a block)") from None
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise DatasetError(f"{path}: cannot be read to the end ({err})") from None


def guess_delimiter(path: Path) -> str:
    """Tab for ``.tsv``/``.tab``, comma for ``.csv``, else tab if the first line has one."""
    suffixes = [s.lower() for s in path.suffixes]
    if ".tsv" in suffixes or ".tab" in suffixes:
        return "\t"
    if ".csv" in suffixes:
        return ","
    with open_text(path) as handle:
        first = handle.readline()
    return "\t" if "\t" in first else ","


def find_column(header: list[str], field: str, given: str | None, path: Path, required: bool) -> int | None:
    """Index of ``field``'s column: the ``given`` name, else the first alias in the header.

    Raises:
        DatasetError: a given name that is not in the header, or no alias of a required
            field (naming the file and the columns found).
    """
    lowered = [name.strip().lower() for name in header]
    if given is not None:
        if given.strip().lower() not in lowered:
            raise DatasetError(f"{path}:1: no column named {given!r} for the {field} (columns: {', '.join(header)})")
        return lowered.index(given.strip().lower())
    for alias in COLUMN_ALIASES[field]:
        if alias in lowered:
            return lowered.index(alias)
    if required:
        raise DatasetError(
            f"{path}:1: no {field} column; name it one of {', '.join(COLUMN_ALIASES[field])} "
            f"or pass its name (columns: {', '.join(header)})"
        )
    return None
