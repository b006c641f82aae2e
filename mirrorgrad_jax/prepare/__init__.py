"""Raw data -> MMRec dataset folders: the reference's preprocessing as pure functions.

* :func:`prepare_amazon`, :func:`prepare_folder`: the whole pipeline, resumable, writing
  the dataset folder atomically (what ``mirrorgrad prepare amazon|folder`` runs).
* Interactions: :func:`read_amazon_ratings`, :func:`read_interaction_table`,
  :func:`clean_interactions` (missing fields, duplicates, iterative k-core,
  first-appearance re-indexing), :func:`k_core_mask`.
* Splits: :func:`split_per_user` (the reference's), :func:`split_temporal`.
* Text: :func:`parse_record` (safe metadata lines), :func:`read_amazon_metadata`,
  :func:`amazon_sentence` (the reference's sentence), :func:`read_item_table`;
  :class:`MiniLMEncoder` / :func:`encode_sentences` (all-MiniLM-L6-v2 in Flax; the
  ``text`` extra).
* Images: :func:`read_image_features` (Amazon's binary file), :func:`load_resnet` and
  :func:`encode_image_files` (a ResNet over image files; the ``images`` extra).

The encoders import their optional packages only when used, so everything else works
with the core install.
"""

from mirrorgrad_jax.prepare.images import (
    ImageFeatures,
    encode_image_files,
    find_item_images,
    load_image,
    load_resnet,
    read_image_features,
)
from mirrorgrad_jax.prepare.interactions import (
    Interactions,
    RawInteractions,
    clean_interactions,
    first_appearance_codes,
    k_core_mask,
    read_amazon_ratings,
    read_interaction_table,
)
from mirrorgrad_jax.prepare.minilm import (
    MiniLMEncoder,
    encode_sentences,
    find_minilm_model,
    minilm_text_encoder,
)
from mirrorgrad_jax.prepare.pipeline import (
    PrepareOptions,
    PrepareResult,
    format_summary,
    prepare_amazon,
    prepare_folder,
)
from mirrorgrad_jax.prepare.splits import (
    TEMPORAL_RATIOS,
    split_per_user,
    split_temporal,
)
from mirrorgrad_jax.prepare.text import (
    amazon_sentence,
    parse_record,
    read_amazon_metadata,
    read_item_table,
)

__all__ = [
    "TEMPORAL_RATIOS",
    "ImageFeatures",
    "Interactions",
    "MiniLMEncoder",
    "PrepareOptions",
    "PrepareResult",
    "RawInteractions",
    "amazon_sentence",
    "clean_interactions",
    "encode_image_files",
    "encode_sentences",
    "find_item_images",
    "find_minilm_model",
    "minilm_text_encoder",
    "first_appearance_codes",
    "format_summary",
    "k_core_mask",
    "load_image",
    "load_resnet",
    "parse_record",
    "prepare_amazon",
    "prepare_folder",
    "read_amazon_metadata",
    "read_amazon_ratings",
    "read_image_features",
    "read_interaction_table",
    "read_item_table",
    "split_per_user",
    "split_temporal",
]
