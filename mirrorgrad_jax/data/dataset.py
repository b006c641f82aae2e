"""The immutable interaction dataset.

A :class:`RecDataset` holds the train/valid/test interaction pairs, the per-item
modality features and (optionally) the user-user graph of DualGNN/DRAGON. Every array
in it is read-only, so models, samplers and evaluators can share one instance freely.
The number of users (items) is ``max(id) + 1`` over all splits together, exactly as in
the reference. The reference's per-user split is :mod:`mirrorgrad_jax.data.splits`. Bad input is reported with a :class:`DatasetError` that says what is
wrong and where, never with a stack trace from deep inside numpy or JAX. Reading and
writing folders is :mod:`mirrorgrad_jax.data.mmrec`.

Example::

    ds = RecDataset.from_arrays("tiny", train, valid, test, {"image": image_feat})
    print(ds.summary())
    indptr, indices = ds.train_csr()
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
from typing import Any, Mapping

import numpy as np

from mirrorgrad_jax.errors import UserInputError

__all__ = ["DatasetError", "RecDataset", "SPLIT_LABELS", "check_user_graph", "first_occurrence_mask", "with_source"]

#: ``x_label`` value of each split in ``<name>.inter``.
SPLIT_LABELS: Mapping[str, int] = types.MappingProxyType({"train": 0, "valid": 1, "test": 2})


class DatasetError(UserInputError):
    """Raised when interaction data or features violate the dataset format."""


# ---------------------------------------------------------------------------------------
# Small helpers shared by the constructor and the loader.
# ---------------------------------------------------------------------------------------


def _freeze(array: np.ndarray) -> np.ndarray:
    """Marks an array this module created as read-only and returns it."""
    array.setflags(write=False)
    return array


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only version of a caller's array; copies unless it is already frozen.

    A writeable array is copied so that the caller cannot change the dataset later
    through its own reference.
    """
    if array.flags.writeable or not array.flags.owndata:
        array = np.array(array, copy=True)
    return _freeze(array)


def _as_id_column(values: Any, what: str) -> np.ndarray:
    """Converts ids to int64, raising a DatasetError unless they are integers >= 0."""
    arr = np.asarray(values)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise DatasetError(f"{what} must be non-negative integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            example = arr[np.argmax(bad)]
            raise DatasetError(
                f"{what} must be non-negative integers; {int(bad.sum())} values are not "
                f"integers (e.g. {example!r})"
            )
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        negative = arr < 0
        raise DatasetError(
            f"{what} must be non-negative integers; {int(negative.sum())} values are "
            f"negative (e.g. {int(arr[np.argmax(negative)])})"
        )
    return arr


def _as_pairs(values: Any, split: str) -> np.ndarray:
    """Converts one split to an (E, 2) int64 array of (user, item) pairs."""
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != 2:
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        else:
            raise DatasetError(
                f"the {split} split must have shape (E, 2) with columns (user, item), "
                f"got shape {arr.shape}"
            )
    users = _as_id_column(arr[:, 0], f"user ids in the {split} split")
    items = _as_id_column(arr[:, 1], f"item ids in the {split} split")
    return np.stack([users, items], axis=1)


def _missing_ids(used: np.ndarray, count: int) -> int:
    """How many of the ids 0..count-1 never occur in ``used``."""
    present = np.zeros(count, dtype=bool)
    present[used] = True
    return int(count - present.sum())


def first_occurrence_mask(pairs: np.ndarray) -> np.ndarray:
    """Boolean mask that keeps the first occurrence of every (user, item) pair."""
    if len(pairs) == 0:
        return np.ones(0, dtype=bool)
    width = int(pairs[:, 1].max()) + 1
    keys = pairs[:, 0].astype(np.int64) * width + pairs[:, 1]
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(pairs), dtype=bool)
    keep[first] = True
    return keep


def _check_features(
    features: Mapping[str, Any],
    num_items: int,
    sources: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Checks shapes and finiteness of the modality features; returns float32 copies."""
    checked: dict[str, np.ndarray] = {}
    for modality, values in features.items():
        if not isinstance(modality, str) or not modality:
            raise DatasetError(
                f"feature modality names must be non-empty strings, got {modality!r}"
            )
        label = (sources or {}).get(modality, f"the {modality!r} feature matrix")
        arr = np.asarray(values)
        if arr.ndim != 2:
            raise DatasetError(f"{label} must be a 2-D (items, dims) array, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DatasetError(f"{label} must be numeric, got dtype {arr.dtype}")
        if arr.shape[0] != num_items:
            raise DatasetError(f"{label} has {arr.shape[0]} rows, expected {num_items} items")
        arr = _read_only(arr) if arr.dtype == np.float32 else _freeze(arr.astype(np.float32))
        finite = np.isfinite(arr)
        if not finite.all():
            bad = ~finite
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(bad.sum()) - n_nan
            rows = int(bad.any(axis=1).sum())
            raise DatasetError(
                f"{label} contains {n_nan} NaN and {n_inf} inf values "
                f"(in {rows} of {num_items} item rows)"
            )
        checked[modality] = arr
    return checked


def check_user_graph(
    user_graph: Mapping[Any, Any], num_users: int, label: str
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Validates the user-user graph dict and returns read-only (ids, weights) arrays."""
    if len(user_graph) != num_users:
        raise DatasetError(f"{label} has {len(user_graph)} users, expected {num_users}")
    graph: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for key, value in user_graph.items():
        try:
            user = int(key)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a float key of inf
            raise DatasetError(f"{label}: user key {key!r} is not an integer") from None
        if not 0 <= user < num_users:
            raise DatasetError(f"{label}: user key {user} is outside 0..{num_users - 1}")
        try:
            neighbours, weights = value
        except (TypeError, ValueError):
            raise DatasetError(
                f"{label}: the value of user {user} must be a pair (neighbour_ids, weights)"
            ) from None
        try:
            neighbours = np.asarray(neighbours).reshape(-1)
            weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as err:  # ragged lists, text weights
            raise DatasetError(f"{label}: the neighbours or weights of user {user} are not flat numeric lists ({err})") from None
        if len(neighbours) != len(weights):
            raise DatasetError(
                f"{label}: user {user} has {len(neighbours)} neighbours but {len(weights)} weights"
            )
        neighbours = _as_id_column(neighbours, f"{label}: neighbours of user {user}")
        if len(neighbours) and neighbours.max() >= num_users:
            raise DatasetError(
                f"{label}: user {user} has neighbour {int(neighbours.max())}, "
                f"but there are only {num_users} users"
            )
        graph[user] = (_freeze(neighbours), _freeze(np.array(weights)))
    return graph


# ---------------------------------------------------------------------------------------
# The dataset object.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RecDataset:
    """An immutable implicit-feedback dataset with per-item multimodal features.

    Constructing it directly checks the invariants every consumer relies on (shapes,
    id ranges, feature rows, finite features, non-empty splits, no duplicate pairs,
    every valid/test user has train rows) and stores read-only copies of all arrays.
    :meth:`from_arrays` additionally infers the sizes, checks that ids are contiguous,
    can drop duplicates and filters cold-start valid/test users like the reference;
    the loader goes through it.

    Attributes:
        name: Dataset name (also the stem of the ``.inter`` file).
        num_users: ``max(userID) + 1`` over all splits.
        num_items: ``max(itemID) + 1`` over all splits.
        train: ``(E_train, 2)`` int32 ``(user, item)`` rows, in file order.
        valid: ``(E_valid, 2)`` int32 rows.
        test: ``(E_test, 2)`` int32 rows.
        features: Read-only mapping modality name -> ``(num_items, D)`` float32.
        user_graph: Optional read-only mapping user -> ``(neighbour_ids, weights)``.
    """

    name: str
    num_users: int
    num_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: Mapping[str, np.ndarray]
    user_graph: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        set_field = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731
        if not isinstance(self.name, str) or not self.name:
            raise DatasetError(f"the dataset name must be a non-empty string, got {self.name!r}")
        num_users, num_items = int(self.num_users), int(self.num_items)
        if num_users <= 0 or num_items <= 0:
            raise DatasetError(
                f"num_users and num_items must be positive, got {num_users} and {num_items}"
            )
        if num_users > np.iinfo(np.int32).max or num_items > np.iinfo(np.int32).max:
            raise DatasetError("user and item ids must fit in int32")
        set_field("num_users", num_users)
        set_field("num_items", num_items)

        splits = {}
        for split in SPLIT_LABELS:
            pairs = _as_pairs(getattr(self, split), split)
            if len(pairs) == 0:
                raise DatasetError(f"the {split} split is empty")
            for column, kind, bound in ((0, "user", num_users), (1, "item", num_items)):
                if pairs[:, column].max() >= bound:
                    raise DatasetError(
                        f"the {split} split has {kind} id {int(pairs[:, column].max())}, "
                        f"but num_{kind}s is {bound}"
                    )
            splits[split] = pairs

        everything = np.concatenate([splits["train"], splits["valid"], splits["test"]])
        n_duplicates = int(len(everything) - first_occurrence_mask(everything).sum())
        if n_duplicates:
            raise DatasetError(
                f"{n_duplicates} duplicate (user, item) pairs across the splits; "
                "load with dedupe=True to keep only the first occurrence of each pair"
            )
        has_train = np.zeros(num_users, dtype=bool)
        has_train[splits["train"][:, 0]] = True
        for split in ("valid", "test"):
            cold = ~has_train[splits[split][:, 0]]
            if cold.any():
                raise DatasetError(
                    f"{int(cold.sum())} {split} rows belong to users without train rows; "
                    "RecDataset.from_arrays filters them like the reference"
                )
        for split, pairs in splits.items():
            set_field(split, _freeze(pairs.astype(np.int32)))

        if not isinstance(self.features, Mapping):
            raise DatasetError(
                f"features must be a mapping modality -> array, got {type(self.features).__name__}"
            )
        set_field(
            "features", types.MappingProxyType(_check_features(self.features, num_items))
        )
        if self.user_graph is not None:
            graph = check_user_graph(self.user_graph, num_users, "the user graph")
            set_field("user_graph", types.MappingProxyType(graph))
        set_field("_cache", {})

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        name: str,
        train: Any,
        valid: Any,
        test: Any,
        features: Mapping[str, Any],
        num_users: int | None = None,
        num_items: int | None = None,
        user_graph: Mapping[Any, Any] | None = None,
        *,
        dedupe: bool = False,
        verbose: bool = True,
        feature_sources: Mapping[str, str] | None = None,
    ) -> "RecDataset":
        """Builds a dataset from split arrays, with the loader's validation and filtering.

        Args:
            name: Dataset name.
            train: ``(E, 2)`` array-like of ``(user, item)`` train rows.
            valid: ``(E, 2)`` validation rows.
            test: ``(E, 2)`` test rows.
            features: Mapping modality -> ``(num_items, D)`` array (cast to float32).
            num_users: Number of users; default ``max(user id) + 1`` over all splits.
            num_items: Number of items; default ``max(item id) + 1`` over all splits.
            user_graph: Optional ``{user: (neighbour_ids, weights)}`` mapping.
            dedupe: Keep only the first occurrence of duplicate ``(user, item)``
                pairs (train first, then valid, then test) instead of raising.
            verbose: Print how many rows were dropped or filtered.
            feature_sources: Optional modality -> file name, used in error messages.

        Returns:
            The validated, read-only dataset.

        Raises:
            DatasetError: ids that are not non-negative integers or not contiguous
                ``0..n-1``; feature rows that do not match the items; NaN or inf
                features; an empty split; duplicate pairs (without ``dedupe``).
        """
        splits = {"train": train, "valid": valid, "test": test}
        pairs = {split: _as_pairs(values, split) for split, values in splits.items()}
        for split, rows in pairs.items():
            if len(rows) == 0:
                raise DatasetError(f"the {split} split is empty")
        everything = np.concatenate(list(pairs.values()))
        sizes = {}
        for column, kind, given in ((0, "user", num_users), (1, "item", num_items)):
            largest = int(everything[:, column].max()) + 1
            count = largest if given is None else int(given)
            if count < largest:
                raise DatasetError(
                    f"num_{kind}s={count} but the data has {kind} id {largest - 1}"
                )
            if count > len(everything):  # more ids than rows: some never occur (and a crafted id would allocate a huge mask)
                raise DatasetError(
                    f"{kind} ids that are not 0..n-1: the largest is {largest - 1} but there are only "
                    f"{len(everything)} rows, so at least {count - len(everything)} of the ids 0..{count - 1} "
                    "never occur; re-index the ids to be contiguous"
                )
            missing = _missing_ids(everything[:, column], count)
            if missing:
                raise DatasetError(
                    f"{kind} ids that are not 0..n-1: {missing} of the ids 0..{count - 1} "
                    "never occur; re-index the ids to be contiguous"
                )
            sizes[kind] = count

        keep = first_occurrence_mask(everything)
        n_duplicates = int(len(keep) - keep.sum())
        if n_duplicates:
            if not dedupe:
                raise DatasetError(
                    f"{n_duplicates} duplicate (user, item) pairs; pass dedupe=True to keep "
                    "only the first occurrence of each pair"
                )
            _report(f"[{name}] dropped {n_duplicates} duplicate (user, item) rows", verbose)
            start = 0
            for split, rows in pairs.items():
                pairs[split] = rows[keep[start : start + len(rows)]]
                start += len(rows)

        # Reference behaviour (filter_out_cod_start_users): valid/test rows of users
        # with no train row cannot be ranked against a train history, so drop them.
        has_train = np.zeros(sizes["user"], dtype=bool)
        has_train[pairs["train"][:, 0]] = True
        for split in ("valid", "test"):
            warm = has_train[pairs[split][:, 0]]
            if not warm.all():
                n_cold = int((~warm).sum())
                n_users = len(np.unique(pairs[split][~warm, 0]))
                _report(
                    f"[{name}] filtered {n_cold} {split} rows of {n_users} users "
                    "without train rows",
                    verbose,
                )
                pairs[split] = pairs[split][warm]

        checked = _check_features(features, sizes["item"], feature_sources)
        return cls(
            name=name,
            num_users=sizes["user"],
            num_items=sizes["item"],
            train=pairs["train"],
            valid=pairs["valid"],
            test=pairs["test"],
            features=checked,
            user_graph=user_graph,
        )

    # -- accessors ------------------------------------------------------------------

    @property
    def source(self) -> str | None:
        """Where the data was loaded from: the absolute path of an MMRec folder, or the
        built-in name it was generated or downloaded under (``"synthetic"``,
        ``"large:scale=0.5"``...); ``None`` for data built in memory, and for a dataset
        derived from another one (``dataclasses.replace`` makes a new dataset without it).
        Checkpoints record it, so ``mirrorgrad evaluate`` finds the data again."""
        return self.__dict__.get("_source")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data, for checking that a checkpoint meets the data it was trained on.

        The user and item counts, each split's size, a SHA-256 of the three split arrays
        (their shapes and int32 values, in order) and every feature matrix's shape. It is
        computed once (about a second per 100 million interactions) and is the same for the
        same data wherever it is loaded from; a dataset prepared with another split seed
        differs in its hash.

        Returns:
          A JSON-ready dict: ``num_users``, ``num_items``, ``train``, ``valid``, ``test``
          (row counts), ``splits_sha256`` and ``features`` (modality -> ``[rows, dims]``).
        """

        def build() -> dict[str, Any]:
            digest = hashlib.sha256(b"mirrorgrad-splits-v1")
            for split in SPLIT_LABELS:
                rows = np.ascontiguousarray(getattr(self, split), dtype="<i4")
                digest.update(np.asarray(rows.shape, "<i8").tobytes())
                digest.update(rows.tobytes())
            return {
                "num_users": int(self.num_users),
                "num_items": int(self.num_items),
                **{split: int(len(getattr(self, split))) for split in SPLIT_LABELS},
                "splits_sha256": digest.hexdigest(),
                "features": {k: [int(d) for d in v.shape] for k, v in self.features.items()},
            }

        return dict(self._cached("fingerprint", build))

    def split(self, name: str) -> np.ndarray:
        """Returns the ``(E, 2)`` rows of ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in SPLIT_LABELS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLIT_LABELS)}")
        return getattr(self, name)

    def _cached(self, key: str, build: Any) -> Any:
        cache = self.__dict__["_cache"]
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-user train items in CSR form, computed once and cached.

        Returns:
            ``(indptr, indices)``: ``indptr`` is ``(num_users + 1,)`` int64 and user
            ``u``'s train items are ``indices[indptr[u]:indptr[u + 1]]`` (int32,
            sorted ascending).
        """

        def build() -> tuple[np.ndarray, np.ndarray]:
            users, items = self.train[:, 0], self.train[:, 1]
            order = np.lexsort((items, users))
            indptr = np.zeros(self.num_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(users, minlength=self.num_users), out=indptr[1:])
            return _freeze(indptr), _freeze(items[order].astype(np.int32))

        return self._cached("train_csr", build)

    def train_item_pool(self) -> np.ndarray:
        """Sorted distinct items of the train split (the negative-sampling pool), int32."""
        return self._cached(
            "train_item_pool",
            lambda: _freeze(np.unique(self.train[:, 1]).astype(np.int32)),
        )

    def stats(self) -> dict[str, Any]:
        """Size statistics of the dataset (the numbers :meth:`summary` prints)."""
        sizes = {split: int(len(getattr(self, split))) for split in SPLIT_LABELS}
        total = sum(sizes.values())
        train_items = int(len(self.train_item_pool()))
        per_user = np.diff(self.train_csr()[0])
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_train": sizes["train"],
            "num_valid": sizes["valid"],
            "num_test": sizes["test"],
            "num_interactions": total,
            "density": total / (self.num_users * self.num_items),
            "sparsity": 1.0 - total / (self.num_users * self.num_items),
            "num_train_items": train_items,
            "num_cold_items": self.num_items - train_items,
            "train_per_user_min": int(per_user.min()),
            "train_per_user_mean": float(per_user.mean()),
            "train_per_user_max": int(per_user.max()),
            "features": {name: tuple(arr.shape) for name, arr in self.features.items()},
            "has_user_graph": self.user_graph is not None,
        }

    def summary(self) -> str:
        """A short human-readable description: sizes, sparsity and feature shapes."""
        s = self.stats()
        features = ", ".join(
            f"{name} {shape[0]}x{shape[1]}" for name, shape in s["features"].items()
        )
        lines = [
            f"dataset {s['name']}: {s['num_users']} users, {s['num_items']} items, "
            f"{s['num_interactions']} interactions (sparsity {100 * s['sparsity']:.4f}%)",
            f"  train {s['num_train']}, valid {s['num_valid']}, test {s['num_test']}",
            f"  train items {s['num_train_items']} (cold items {s['num_cold_items']}); "
            f"train rows per user min {s['train_per_user_min']}, "
            f"mean {s['train_per_user_mean']:.2f}, max {s['train_per_user_max']}",
            f"  features: {features or 'none'}",
        ]
        if s["has_user_graph"]:
            lines.append(f"  user graph: {s['num_users']} users")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # MappingProxyType cannot be pickled; rebuild (and re-validate) from plain dicts.
        graph = None if self.user_graph is None else dict(self.user_graph)
        return type(self), (
            self.name, self.num_users, self.num_items, self.train, self.valid, self.test,
            dict(self.features), graph,
        )  # fmt: skip

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"RecDataset(name={self.name!r}, num_users={self.num_users}, "
            f"num_items={self.num_items}, train={s['num_train']}, valid={s['num_valid']}, "
            f"test={s['num_test']}, features={s['features']})"
        )


def with_source(dataset: RecDataset, source: str | None) -> RecDataset:
    """Records where ``dataset`` was loaded from (:attr:`RecDataset.source`) and returns it.

    The loaders call it once, on the dataset they just built; it changes no data.
    """
    object.__setattr__(dataset, "_source", source)
    return dataset


def _report(message: str, verbose: bool) -> None:
    if verbose:
        print(message)
