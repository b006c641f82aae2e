"""The settings of a preparation and what it reports back."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from mirrorgrad_jax.config import Constraint, PositiveInt, Seed, config_class
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.prepare.splits import TEMPORAL_RATIOS

__all__ = ["PrepareOptions", "PrepareResult", "resolve_options"]


@config_class
class PrepareOptions:
    """Settings shared by :func:`prepare_amazon` and :func:`prepare_folder`.

    Attributes:
        name: Dataset name, the stem of ``<name>.inter``; default the output folder's name.
        k_core: Minimum interactions per user and per item (5 in the reference).
        user_core: Overrides ``k_core`` for users.
        item_core: Overrides ``k_core`` for items.
        repeated_pairs: A ``(user, item)`` pair repeated at another time: ``"count"``
            (the reference's) counts every repeat toward the k-core and keeps the pair's
            first row after it; ``"drop"`` keeps the first row before the k-core. See
            :func:`~mirrorgrad_jax.prepare.clean_interactions`.
        split: ``"per-user"`` (the reference's) or ``"temporal"`` (global 70/10/20 by time).
        seed: Seed of the per-user shuffle.
        odd_row_to: Per-user split: where a user's odd held-out row goes, ``"valid"``
            (as in the released MMRec Baby set) or ``"test"`` (as the reference notebook
            computes); see :func:`~mirrorgrad_jax.prepare.split_per_user`.
        temporal_ratios: Train/valid/test shares of the temporal split.
        text_model: all-MiniLM-L6-v2 folder; default the installed package.
        text_batch_size: Sentences per device batch.
        image_batch_size: Images per device batch (image folders).
        image_resize: Shorter side after resizing (image folders).
        image_crop: Centre crop side (image folders).
        user_graph: Also write the DualGNN/DRAGON user-user graph.
        overwrite: Replace an output folder that already holds files.
        missing_text: What an item without text gets: ``"error"`` stops (the default of
            :func:`prepare_amazon`: every item needs a metadata record, as in the
            reference) or ``"mean"``, the mean text vector (the default of
            :func:`prepare_folder`).
        progress: Show progress bars.
        verbose: Print what each step did and the summary.
    """

    name: str | None = None
    k_core: PositiveInt = 5
    user_core: PositiveInt | None = None
    item_core: PositiveInt | None = None
    repeated_pairs: Literal["count", "drop"] = "count"
    split: Literal["per-user", "temporal"] = "per-user"
    seed: Seed = 999
    odd_row_to: Literal["valid", "test"] = "valid"
    temporal_ratios: tuple[float, float, float] = TEMPORAL_RATIOS
    text_model: str | os.PathLike | None = None
    text_batch_size: PositiveInt = 128
    image_batch_size: PositiveInt = 32
    image_resize: PositiveInt = 256
    image_crop: PositiveInt = 224
    user_graph: bool = True
    overwrite: bool = False
    missing_text: Literal["error", "mean"] | None = None
    progress: bool = True
    verbose: bool = True

    constraints = (
        Constraint(("image_crop", "image_resize"), lambda o: o.image_crop <= o.image_resize, "must satisfy image_crop <= image_resize"),
        Constraint(
            ("name",),
            lambda o: o.name is None or (bool(o.name) and "/" not in o.name and os.sep not in o.name),
            "must be a plain file stem (no folder)",
        ),
    )

    @property
    def cores(self) -> tuple[int, int]:
        return (self.user_core or self.k_core, self.item_core or self.k_core)


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What a preparation produced.

    Attributes:
        path: The dataset folder (load it with :func:`mirrorgrad_jax.data.load_mmrec`).
        summary: The numbers also written to ``summary.json``.
        steps_run: Steps computed in this call.
        steps_reused: Steps taken from an interrupted earlier call.
        notes: Warnings about the written set (e.g. a catalogue smaller than the largest
            ranking cut-off of training), one line each; printed with ``verbose``.
    """

    path: Path
    summary: Mapping[str, Any]
    steps_run: tuple[str, ...]
    steps_reused: tuple[str, ...]
    notes: tuple[str, ...] = ()


def resolve_options(options: PrepareOptions | None, overrides: Mapping[str, Any], *, missing_text: str) -> PrepareOptions:
    """``options`` with ``overrides`` applied and the entry point's default for missing texts."""
    options = options or PrepareOptions()
    try:
        options = dataclasses.replace(options, **overrides)
    except TypeError as err:
        names = ", ".join(f.name for f in dataclasses.fields(PrepareOptions))
        raise ConfigError(f"{err}; the options are: {names}") from None
    if options.missing_text is None:
        options = dataclasses.replace(options, missing_text=missing_text)
    return options
