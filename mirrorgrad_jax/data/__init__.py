"""Datasets: the dataset type, the MMRec format, synthetic and MovieLens data, sampling.

* :class:`RecDataset` (:mod:`.dataset`): the immutable dataset, validated with
  :class:`DatasetError`;
* :func:`load_mmrec`, :func:`write_mmrec` (:mod:`.mmrec`): the MMRec on-disk format, the
  user graph read without running code.
* :func:`per_user_split`: the reference's per-user random train/valid/test split.
* :func:`make_synthetic`, :data:`SYNTHETIC_DEFAULT`: a generated multimodal dataset.
* :func:`make_large`: a generated dataset at the shapes of Amazon Electronics (or S times it).
* :func:`load_movielens_100k`: MovieLens-100K with text and metadata features (its text
  encoder is pluggable: :func:`mirrorgrad_jax.prepare.minilm_text_encoder`).
* :func:`sample_negatives`, :func:`epoch_batches`: the reference's training batches.
* :func:`load_dataset`, :data:`DATASETS`: the names ``--dataset`` accepts.
"""

from mirrorgrad_jax.data.dataset import SPLIT_LABELS, DatasetError, RecDataset
from mirrorgrad_jax.data.splits import per_user_split
from mirrorgrad_jax.data.mmrec import convert_user_graph, load_mmrec, read_user_graph, write_mmrec
from mirrorgrad_jax.data.catalog import DATASETS, describe_dataset, load_dataset
from mirrorgrad_jax.data.large import ELECTRONICS_SHAPE, LargeShape, large_shape, make_large
from mirrorgrad_jax.data.movielens import load_movielens_100k
from mirrorgrad_jax.data.sampling import EpochBatches, epoch_batches, sample_negatives
from mirrorgrad_jax.data.synthetic import SYNTHETIC_DEFAULT, make_synthetic

__all__ = [
    "DATASETS",
    "ELECTRONICS_SHAPE",
    "SPLIT_LABELS",
    "SYNTHETIC_DEFAULT",
    "DatasetError",
    "EpochBatches",
    "LargeShape",
    "RecDataset",
    "convert_user_graph",
    "describe_dataset",
    "epoch_batches",
    "load_dataset",
    "load_mmrec",
    "large_shape",
    "load_movielens_100k",
    "make_large",
    "make_synthetic",
    "per_user_split",
    "read_user_graph",
    "sample_negatives",
    "write_mmrec",
]
