"""MovieLens-100K as a small real multimodal dataset in the MMRec format.

Where the data comes from (first that works; nothing is ever written into the repo):

1. raw files already in ``<cache_dir>/raw`` (``u.data`` + ``u.item``, or
   ``ml-100k.inter`` + ``ml-100k.item``), e.g. copied there by hand on an offline machine;
2. the official GroupLens archive ``ml-100k.zip``;
3. the ``recbole`` wheel on PyPI, downloaded with ``pip download`` (never installed),
   which ships ML-100K as RecBole atomic files.

Both sources hold the same 100,000 ratings in the same order, so they give the same
dataset. Choices made here:

* **Implicit feedback:** every rating (1-5) counts as an interaction, as in the usual
  implicit-feedback ML-100K benchmarks; the rating value is not used.
* Users and items are re-indexed ``0..n-1`` in order of first appearance in the
  ratings file; duplicate (user, item) rows are dropped (ML-100K has none); no k-core
  filter is needed (every user has >= 20 ratings). Items without a rating are dropped.
* The split is the reference's per-user random split (:func:`per_user_split`) with the
  fixed seed 999 (the reference's seed).
* Modalities: ``"text"`` is TF-IDF of ``"title (year) genres"`` reduced to 64 dims by
  truncated SVD, or whatever a :data:`TextEncoder` passed as ``text_encoder`` makes of
  those sentences (all-MiniLM-L6-v2 embeddings with
  :func:`mirrorgrad_jax.prepare.minilm_text_encoder`); ``"meta"`` is the genre multi-hot
  vector, the z-scored release year and a year-unknown flag (the fields both sources share).

The built dataset is cached in the MMRec format under ``cache_dir``; later calls load
the cache.

Example::

    ds = load_movielens_100k()
    print(ds.summary())
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mirrorgrad_jax.data.dataset import DatasetError, RecDataset
from mirrorgrad_jax.data.splits import per_user_split
from mirrorgrad_jax.data.mmrec import load_mmrec, write_mmrec

__all__ = [
    "ML100K_GENRES",
    "MovieLensUnavailable",
    "TextEncoder",
    "MovieLensRaw",
    "build_movielens",
    "load_movielens_100k",
    "parse_grouplens",
    "parse_recbole",
    "tfidf",
    "truncated_svd",
]

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
DATASET_NAME = "movielens-100k"
SPLIT_SEED = 999
TEXT_DIMS = 64

#: The 19 genres of ML-100K, in the order of the flag columns of ``u.item``.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_CACHE_FORMAT = 1

TextEncoder = Callable[[Sequence[str]], np.ndarray]
"""``encode(sentences) -> (len(sentences), D)`` float array, with a ``name`` attribute that
names it in the cache (e.g. :func:`mirrorgrad_jax.prepare.minilm_text_encoder`)."""
_TRAILING_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class MovieLensRaw:
    """Parsed ML-100K files, still with the original ids.

    Attributes:
        users: ``(n,)`` raw user ids of the rating rows, in file order.
        items: ``(n,)`` raw item ids of the rating rows.
        item_ids: ``(m,)`` raw ids of the rows of the item table.
        titles: Title of each item-table row, without the trailing ``(year)``.
        years: ``(m,)`` float release year, NaN when unknown.
        genres: Genre names of each item-table row.
        source: ``"grouplens"`` or ``"recbole"``.
    """

    users: np.ndarray
    items: np.ndarray
    item_ids: np.ndarray
    titles: tuple[str, ...]
    years: np.ndarray
    genres: tuple[tuple[str, ...], ...]
    source: str


class MovieLensUnavailable(DatasetError, RuntimeError):
    """MovieLens-100K could not be downloaded and no raw files are there: one line at the CLI.

    A :class:`RuntimeError` still (what callers caught before), and a
    :class:`~mirrorgrad_jax.data.DatasetError`, so the command line reports it in one line.
    """


# ---------------------------------------------------------------------------------------
# Parsers (pure functions of the file contents, so they are testable offline).
# ---------------------------------------------------------------------------------------


def _parse_year(text: str) -> float:
    text = text.strip()
    return float(text) if text.isdigit() else math.nan


def _ratings_table(rows: list[list[str]], what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        users = np.array([int(row[0]) for row in rows], dtype=np.int64)
        items = np.array([int(row[1]) for row in rows], dtype=np.int64)
    except (ValueError, IndexError) as err:
        raise DatasetError(f"{what}: malformed rating row ({err})") from None
    return users, items


def parse_grouplens(u_data: str, u_item: str) -> MovieLensRaw:
    """Parses the GroupLens files ``u.data`` and ``u.item`` (given as text).

    ``u.data`` has tab-separated ``user item rating timestamp`` rows; ``u.item`` has
    ``|``-separated ``id|title (year)|release date|video release date|URL|19 genre
    flags`` rows (the file is latin-1 encoded; decode it before calling).

    Args:
        u_data: Contents of ``u.data``.
        u_item: Contents of ``u.item``.

    Returns:
        The parsed :class:`MovieLensRaw`.
    """
    rows = [line.split("\t") for line in u_data.splitlines() if line.strip()]
    users, items = _ratings_table(rows, "u.data")
    item_ids, titles, years, genres = [], [], [], []
    for line_no, line in enumerate(u_item.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 5 + len(ML100K_GENRES):
            raise DatasetError(
                f"u.item line {line_no} has {len(fields)} fields, expected "
                f"{5 + len(ML100K_GENRES)}"
            )
        try:
            item_ids.append(int(fields[0]))
        except ValueError:
            raise DatasetError(f"u.item line {line_no}: the item id {fields[0]!r} is not a whole number") from None
        title = fields[1].strip()
        match = _TRAILING_YEAR.search(title)
        title_year = float(match.group(1)) if match else math.nan
        if match:
            title = title[: match.start()]
        # The release date looks like 01-Jan-1995; fall back to the title's "(1995)".
        date_year = _parse_year(fields[2].strip()[-4:]) if fields[2].strip() else math.nan
        years.append(date_year if not math.isnan(date_year) else title_year)
        titles.append(title)
        flags = fields[5 : 5 + len(ML100K_GENRES)]
        genres.append(tuple(g for g, flag in zip(ML100K_GENRES, flags) if flag.strip() == "1"))
    return MovieLensRaw(
        users=users,
        items=items,
        item_ids=np.array(item_ids, dtype=np.int64),
        titles=tuple(titles),
        years=np.array(years, dtype=np.float64),
        genres=tuple(genres),
        source="grouplens",
    )


def _atomic_table(text: str, what: str, required: Sequence[str]) -> tuple[list, dict[str, int]]:
    """Splits a RecBole atomic file into rows and a field-name -> column map."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetError(f"{what} is empty")
    header = [field.split(":", 1)[0].strip() for field in lines[0].split("\t")]
    missing = [field for field in required if field not in header]
    if missing:
        raise DatasetError(f"{what} lacks the field(s) {', '.join(missing)} (found {header})")
    rows = [line.split("\t") for line in lines[1:]]
    return rows, {field: header.index(field) for field in header}


def parse_recbole(inter: str, item: str) -> MovieLensRaw:
    """Parses RecBole's atomic files ``ml-100k.inter`` and ``ml-100k.item`` (as text).

    The files are TSV with typed headers (``user_id:token``, ``movie_title:token_seq``,
    ``release_year:token``, ``class:token_seq``); genres are space-separated tokens.

    Args:
        inter: Contents of ``ml-100k.inter``.
        item: Contents of ``ml-100k.item``.

    Returns:
        The parsed :class:`MovieLensRaw`.
    """
    rows, cols = _atomic_table(inter, "ml-100k.inter", ("user_id", "item_id"))
    users, items = _ratings_table(
        [[row[cols["user_id"]], row[cols["item_id"]]] for row in rows], "ml-100k.inter"
    )
    rows, cols = _atomic_table(item, "ml-100k.item", ("item_id",))

    def field(row: list[str], name: str) -> str:
        col = cols.get(name)
        return row[col].strip() if col is not None and col < len(row) else ""

    item_ids = np.array([int(field(row, "item_id")) for row in rows], dtype=np.int64)
    return MovieLensRaw(
        users=users,
        items=items,
        item_ids=item_ids,
        titles=tuple(field(row, "movie_title") for row in rows),
        years=np.array([_parse_year(field(row, "release_year")) for row in rows]),
        genres=tuple(tuple(field(row, "class").split()) for row in rows),
        source="recbole",
    )


# ---------------------------------------------------------------------------------------
# Text features.
# ---------------------------------------------------------------------------------------


def tfidf(documents: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """TF-IDF matrix of a small corpus, in plain numpy.

    Tokens are the lowercase runs of ``[a-z0-9]``. With raw term counts ``tf``,
    ``N`` documents and document frequency ``df``, the weight is
    ``tf * (ln((1 + N) / (1 + df)) + 1)`` (smoothed idf), and every row is then
    scaled to unit L2 norm (rows without tokens stay zero).

    Args:
        documents: The texts.

    Returns:
        ``(matrix, vocabulary)``: ``(len(documents), V)`` float64 and the ``V`` sorted
        terms naming the columns.
    """
    tokenised = [_TOKEN.findall(doc.lower()) for doc in documents]
    vocabulary = sorted({token for tokens in tokenised for token in tokens})
    column = {term: j for j, term in enumerate(vocabulary)}
    counts = np.zeros((len(documents), len(vocabulary)))
    doc_index = np.repeat(np.arange(len(documents)), [len(t) for t in tokenised])
    term_index = np.array([column[t] for tokens in tokenised for t in tokens], dtype=np.int64)
    np.add.at(counts, (doc_index, term_index), 1.0)
    df = (counts > 0).sum(axis=0)
    idf = np.log((1.0 + len(documents)) / (1.0 + df)) + 1.0
    weights = counts * idf
    norms = np.linalg.norm(weights, axis=1, keepdims=True)
    return weights / np.where(norms > 0, norms, 1.0), vocabulary


def truncated_svd(matrix: np.ndarray, dims: int) -> np.ndarray:
    """Projects the rows of ``matrix`` on its top ``dims`` right singular vectors.

    This is LSA without centring: ``U[:, :k] * S[:k]``, with ``k = min(dims, rank
    bound)``. Each component's sign is fixed so that its largest-magnitude entry is
    positive, which makes the result deterministic.

    Args:
        matrix: ``(n, V)`` array.
        dims: Requested number of components.

    Returns:
        ``(n, k)`` float64 array.
    """
    u, s, _ = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    k = min(dims, len(s))
    embedding = u[:, :k] * s[:k]
    pivot = embedding[np.argmax(np.abs(embedding), axis=0), np.arange(k)]
    return embedding * np.where(pivot < 0, -1.0, 1.0)


# ---------------------------------------------------------------------------------------
# Building the dataset.
# ---------------------------------------------------------------------------------------


def _first_appearance_codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps ids to 0..n-1 in order of first appearance; returns (codes, raw id per code)."""
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(unique), dtype=np.int64)
    rank[order] = np.arange(len(unique))
    return rank[inverse], unique[order]


def _check_text_encoder(text_encoder: str | TextEncoder) -> str:
    """The encoder's name for the cache (``"tfidf"`` or the callable's ``name``).

    Raises:
      ValueError: neither ``"tfidf"`` nor a named callable.
    """
    if text_encoder == "tfidf":
        return "tfidf"
    name = getattr(text_encoder, "name", None)
    if callable(text_encoder) and isinstance(name, str) and name:
        return name
    hint = " (MiniLM: pass text_encoder=mirrorgrad_jax.prepare.minilm_text_encoder())" if text_encoder == "minilm" else ""
    raise ValueError(f"text_encoder must be 'tfidf' or a TextEncoder (a callable with a name), got {text_encoder!r}{hint}")


def build_movielens(
    raw: MovieLensRaw,
    *,
    text_encoder: str | TextEncoder = "tfidf",
    text_dims: int = TEXT_DIMS,
    seed: int = SPLIT_SEED,
    name: str = DATASET_NAME,
    verbose: bool = True,
) -> RecDataset:
    """Turns parsed ML-100K files into a :class:`RecDataset` (see the module docstring).

    Args:
        raw: Output of :func:`parse_grouplens` or :func:`parse_recbole`.
        text_encoder: ``"tfidf"`` (TF-IDF + truncated SVD) or a :data:`TextEncoder`
            applied to the item sentences.
        text_dims: TF-IDF SVD dimensions.
        seed: Seed of the per-user split.
        name: Dataset name.
        verbose: Print what was dropped.

    Returns:
        The dataset with modalities ``"text"`` and ``"meta"``.
    """
    _check_text_encoder(text_encoder)
    pairs = np.stack([raw.users, raw.items], axis=1)
    keys = pairs[:, 0] * (int(pairs[:, 1].max()) + 1) + pairs[:, 1]
    _, first = np.unique(keys, return_index=True)
    if len(first) < len(pairs):
        if verbose:
            print(f"[{name}] dropped {len(pairs) - len(first)} duplicate (user, item) ratings")
        pairs = pairs[np.sort(first)]
    user_codes, _ = _first_appearance_codes(pairs[:, 0])
    item_codes, raw_items = _first_appearance_codes(pairs[:, 1])
    interactions = np.stack([user_codes, item_codes], axis=1)
    train, valid, test = per_user_split(interactions, np.random.default_rng(seed))

    # Metadata rows in the order of the new item ids; items missing from the item
    # table get an empty title, unknown year and no genre.
    table_row = {int(raw_id): row for row, raw_id in enumerate(raw.item_ids)}
    rows = [table_row.get(int(raw_id)) for raw_id in raw_items]
    titles = [raw.titles[r] if r is not None else "" for r in rows]
    years = np.array([raw.years[r] if r is not None else math.nan for r in rows])
    genres = [raw.genres[r] if r is not None else () for r in rows]

    documents = [
        " ".join(
            part
            for part in (title, f"({int(year)})" if not math.isnan(year) else "", " ".join(g))
            if part
        )
        for title, year, g in zip(titles, years, genres)
    ]
    if text_encoder == "tfidf":
        matrix, _ = tfidf(documents)
        text = truncated_svd(matrix, text_dims)
    else:
        text = np.asarray(text_encoder(documents))

    extra_genres = sorted({g for item_genres in genres for g in item_genres} - set(ML100K_GENRES))
    genre_names = list(ML100K_GENRES) + extra_genres
    genre_column = {g: j for j, g in enumerate(genre_names)}
    multi_hot = np.zeros((len(raw_items), len(genre_names)))
    for i, item_genres in enumerate(genres):
        multi_hot[i, [genre_column[g] for g in item_genres]] = 1.0
    known = ~np.isnan(years)
    year_z = np.zeros(len(raw_items))
    if known.any():
        spread = years[known].std()
        year_z[known] = (years[known] - years[known].mean()) / (spread if spread > 0 else 1.0)
    meta = np.column_stack([multi_hot, year_z, (~known).astype(np.float64)])

    return RecDataset.from_arrays(
        name,
        train,
        valid,
        test,
        {"text": text.astype(np.float32), "meta": meta.astype(np.float32)},
        verbose=verbose,
    )


# ---------------------------------------------------------------------------------------
# Downloading and caching.
# ---------------------------------------------------------------------------------------


def _default_cache_root() -> Path:
    return Path.home() / ".cache" / "mirrorgrad_jax"


def _download_grouplens(raw_dir: Path, timeout: float) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as response:
        archive = response.read()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for member in ("u.data", "u.item"):
            (raw_dir / member).write_bytes(zf.read(f"ml-100k/{member}"))


def _download_recbole_wheel(raw_dir: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "recbole", "--no-deps",
            "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"pip download recbole failed: {result.stderr.strip()[-500:]}")
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise RuntimeError("pip download recbole produced no wheel")
        with zipfile.ZipFile(wheels[-1]) as zf:
            for suffix in ("ml-100k.inter", "ml-100k.item"):
                members = [n for n in zf.namelist() if n.endswith(f"/{suffix}")]
                if not members:
                    raise RuntimeError(f"{wheels[-1].name} does not contain {suffix}")
                (raw_dir / suffix).write_bytes(zf.read(members[0]))


def _read_raw(raw_dir: Path) -> MovieLensRaw | None:
    if (raw_dir / "u.data").is_file() and (raw_dir / "u.item").is_file():
        return parse_grouplens(
            (raw_dir / "u.data").read_text(encoding="latin-1"),
            (raw_dir / "u.item").read_text(encoding="latin-1"),
        )
    if (raw_dir / "ml-100k.inter").is_file() and (raw_dir / "ml-100k.item").is_file():
        return parse_recbole(
            (raw_dir / "ml-100k.inter").read_text(encoding="utf-8"),
            (raw_dir / "ml-100k.item").read_text(encoding="utf-8"),
        )
    return None


def _fetch_raw(raw_dir: Path, verbose: bool) -> MovieLensRaw:
    raw = _read_raw(raw_dir)
    if raw is not None:
        return raw
    raw_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for label, fetch, timeout in (
        ("GroupLens archive", _download_grouplens, 20.0),
        ("recbole wheel from PyPI", _download_recbole_wheel, 300.0),
    ):
        if verbose:
            print(f"[{DATASET_NAME}] downloading the {label} ...")
        try:
            fetch(raw_dir, timeout)
        except Exception as err:  # noqa: BLE001 (any failure: try the next source)
            errors.append(f"{label}: {err!r}")
            if verbose:
                print(f"[{DATASET_NAME}] {label} failed: {err!r}")
            continue
        raw = _read_raw(raw_dir)
        if raw is not None:
            return raw
    raise MovieLensUnavailable(
        "could not obtain MovieLens-100K (" + "; ".join(errors) + "). Offline, put u.data "
        f"and u.item from {GROUPLENS_URL} into {raw_dir} and call again."
    )


def load_movielens_100k(
    cache_dir: str | os.PathLike | None = None,
    *,
    text_encoder: str | TextEncoder = "tfidf",
    verbose: bool = True,
) -> RecDataset:
    """Loads MovieLens-100K with text and metadata features, building and caching it once.

    Args:
        cache_dir: Where the raw files and the built MMRec-format dataset live.
            Default ``~/.cache/mirrorgrad_jax/movielens-100k`` (with ``-<name>`` for a
            named text encoder other than TF-IDF).
        text_encoder: ``"tfidf"`` (default, numpy only) or a :data:`TextEncoder`, e.g.
            :func:`mirrorgrad_jax.prepare.minilm_text_encoder` (needs the ``text`` extra
            and the MiniLM weights).
        verbose: Print download progress and the dataset summary when building.

    Returns:
        The dataset: 943 users, 1682 items, 100,000 interactions, modalities
        ``"text"`` and ``"meta"``.

    Raises:
        MovieLensUnavailable: (a RuntimeError and a DatasetError) no source could be
            downloaded and no raw files are present.
        ValueError: a ``text_encoder`` that is neither ``"tfidf"`` nor a named callable.
    """
    encoder_name = _check_text_encoder(text_encoder)
    if cache_dir is None:
        suffix = "" if encoder_name == "tfidf" else f"-{encoder_name}"
        cache_dir = _default_cache_root() / f"{DATASET_NAME}{suffix}"
    cache_dir = Path(cache_dir).expanduser()
    info_path = cache_dir / "build_info.json"
    expected = {"format": _CACHE_FORMAT, "text_encoder": encoder_name}
    if info_path.is_file() and (cache_dir / f"{DATASET_NAME}.inter").is_file():
        try:
            info = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = None  # a damaged cache: rebuilt from the raw files below
        if isinstance(info, dict) and {key: info.get(key) for key in expected} == expected:
            return load_mmrec(cache_dir, DATASET_NAME, verbose=verbose)

    raw = _fetch_raw(cache_dir / "raw", verbose)
    dataset = build_movielens(raw, text_encoder=text_encoder, verbose=verbose)
    write_mmrec(dataset, cache_dir)
    # Written last, so an interrupted build is rebuilt instead of loaded.
    info_path.write_text(json.dumps({**expected, "source": raw.source}, indent=1))
    if verbose:
        print(dataset.summary())
    return dataset
