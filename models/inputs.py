"""What a model reads from a dataset: its modality tables in the reference's roles and order, and its edges.

Many reference models take an image table (``v_feat``) and a text table (``t_feat``);
here the dataset's modalities fill those roles by name (:func:`image_and_text_features`,
:func:`image_and_text_roles`). A dataset that cannot give a model what it needs is a user
mistake, refused with a :class:`~mirrorgrad_jax.errors.ConfigError` naming what is missing.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mirrorgrad_jax.config import Constraint
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import kept_edge_count

__all__ = [
    "branch_order",
    "edges_to_sample",
    "image_and_text_features",
    "image_and_text_roles",
    "modality_role_constraints",
    "require_features",
    "require_knn_k",
]


def image_and_text_features(dataset, image_modality: str, text_modality: str, model: str) -> dict[str, np.ndarray]:
    """The dataset's feature tables for the reference's image (``v_feat``) and text (``t_feat``) roles.

    Args:
      dataset: a :class:`~mirrorgrad_jax.data.RecDataset`.
      image_modality: dataset modality used as the image features (``""``: none).
      text_modality: dataset modality used as the text features (``""``: none).
      model: model name for messages.

    Returns:
      ``{"image": (I, F_v), "text": (I, F_t)}`` float32, holding only the roles that are
      present (the reference runs with either one alone).

    Raises:
      ConfigError: when neither named modality is in the dataset.
    """
    available = sorted(dataset.features)
    wanted = {"image": image_modality, "text": text_modality}
    found = {role: np.asarray(dataset.features[name], np.float32) for role, name in wanted.items() if name and name in dataset.features}
    if not found:
        named = [f"{role}_modality={name!r}" for role, name in wanted.items() if name]
        raise ConfigError(
            f"{model} needs an image and/or a text feature table, but dataset {dataset.name!r} has none of "
            f"{' / '.join(named) or 'the (disabled) roles'}: its modalities are {available or 'none'}; "
            f"set image_modality / text_modality to the names to use"
        )
    for role, name in wanted.items():
        if name and role not in found:
            warnings.warn(
                f"{model}: dataset {dataset.name!r} has no {name!r} modality (its modalities are {available}); "
                f"training without {role} features, as the reference does when that feature file is missing",
                stacklevel=3,
            )
    unused = sorted(set(available) - {n for n in wanted.values() if n})
    if unused:
        warnings.warn(
            f"{model} uses only the image and text roles; modalities {unused} of dataset {dataset.name!r} are ignored "
            f"(set image_modality / text_modality to use them)",
            stacklevel=3,
        )
    return found


def image_and_text_roles(dataset: Any, image: str, text: str, model: str) -> tuple[str, str]:
    """The dataset modalities a model that needs BOTH roles uses as (image, text).

    When the named image modality is missing but the text one is present and exactly one
    other modality exists, that one plays the image role, with a warning (MovieLens-100K has
    ``meta`` and ``text``, no image). Otherwise the names are used as given.

    Raises:
      ConfigError: when either role has no table in the dataset (a user input mistake:
        the command line prints it as one line).
    """
    names = set(dataset.features)
    if image not in names:
        others = sorted(names - {text})
        if text in names and len(others) == 1:
            warnings.warn(f"{model}: dataset {dataset.name!r} has no {image!r} modality; using {others[0]!r} in the image role", stacklevel=3)
            image = others[0]
    missing = [f"{role}_modality={name!r}" for role, name in (("image", image), ("text", text)) if name not in names]
    if missing:
        raise ConfigError(
            f"{model} needs both an image and a text feature table, but dataset {dataset.name!r} has no "
            f"{' / '.join(missing)}: its modalities are {sorted(names) or 'none'}; set image_modality / text_modality"
        )
    return image, text


def branch_order(names) -> list[str]:
    """The reference's per-modality branch order: image (v), text (t), then the rest alphabetically."""
    first = [m for m in ("image", "text") if m in names]
    return first + sorted(set(names) - set(first))


def edges_to_sample(train: Any, dropout: float, model: str) -> tuple[np.ndarray, int]:
    """The distinct train pairs a per-epoch edge sampler draws from, and how many it keeps.

    Args:
      train: ``(E, 2)`` (user, item) train rows.
      dropout: the share of distinct edges dropped each epoch.
      model: model name for the message.

    Returns:
      ``(pairs (E_distinct, 2) int64, kept)`` with ``kept = kept_edge_count(E_distinct, dropout)``.

    Raises:
      ConfigError: when the dropout keeps no edge at all.
    """
    pairs = np.unique(np.asarray(train, np.int64), axis=0)
    kept = kept_edge_count(len(pairs), dropout)
    if kept == 0:
        raise ConfigError(f"{model} dropout={dropout} keeps 0 of the {len(pairs)} distinct train edges; use a smaller dropout")
    return pairs, kept


def require_features(dataset: Any, model: str) -> None:
    """Refuses a dataset without any item feature table for a model that reads features.

    Raises:
      ConfigError: naming the model and the dataset.
    """
    if not dataset.features:
        raise ConfigError(f"{model} needs item features, but dataset {dataset.name!r} has none")


def require_knn_k(knn_k: int, num_items: int, model: str) -> None:
    """Refuses more kNN neighbours per item than there are items.

    Raises:
      ConfigError: ``knn_k`` exceeds ``num_items``.
    """
    if knn_k > num_items:
        raise ConfigError(f"{model} knn_k={knn_k} exceeds the number of items ({num_items})")


def modality_role_constraints(model: str, *, both: bool = False) -> tuple[Constraint, Constraint]:
    """The rules on a config's ``image_modality`` / ``text_modality`` fields, declared in its ``constraints``.

    Args:
      model: the model's name, for the message.
      both: the model runs both roles (``""`` disables neither); otherwise one may be
        ``""`` (left out) but not both.

    Returns:
      ``(at least one / both set, the two differ)``.
    """
    if both:
        needed = Constraint(("image_modality", "text_modality"), lambda c: bool(c.image_modality and c.text_modality), f"must both be set: {model} runs both encoders")
    else:
        needed = Constraint(("image_modality", "text_modality"), lambda c: bool(c.image_modality or c.text_modality), f"cannot both be empty: {model} needs a modality")
    differ = Constraint(("image_modality", "text_modality"), lambda c: not c.image_modality or c.image_modality != c.text_modality, "must name different modalities")
    return needed, differ
