"""Flax NNX recommenders, one per file, all on the interface of :mod:`.base`."""

from mirrorgrad_jax.models.base import Constant, Recommender, TrainingCache, available_models, build_config, get_model, register
from mirrorgrad_jax.models.bm3 import BM3, BM3Config
from mirrorgrad_jax.models.bprmf import BPRMF, BPRMFConfig
from mirrorgrad_jax.models.dragon import DRAGON, DRAGONConfig
from mirrorgrad_jax.models.dualgnn import DualGNN, DualGNNConfig
from mirrorgrad_jax.models.freedom import FREEDOM, FREEDOMConfig
from mirrorgrad_jax.models.grcn import GRCN, GRCNConfig
from mirrorgrad_jax.models.lightgcn import LightGCN, LightGCNConfig
from mirrorgrad_jax.models.mmgcn import MMGCN, MMGCNConfig
from mirrorgrad_jax.models.slmrec import SLMRec, SLMRecConfig
from mirrorgrad_jax.models.vbpr import VBPR, VBPRConfig

__all__ = [
    "BM3",
    "BM3Config",
    "BPRMF",
    "BPRMFConfig",
    "Constant",
    "DRAGON",
    "DRAGONConfig",
    "DualGNN",
    "DualGNNConfig",
    "FREEDOM",
    "FREEDOMConfig",
    "GRCN",
    "GRCNConfig",
    "LightGCN",
    "LightGCNConfig",
    "MMGCN",
    "MMGCNConfig",
    "Recommender",
    "SLMRec",
    "SLMRecConfig",
    "TrainingCache",
    "VBPR",
    "VBPRConfig",
    "available_models",
    "build_config",
    "get_model",
    "register",
]
