"""Flax NNX recommenders, one per file, all on the interface of :mod:`.interface`.

The MG reference's zoo (VBPR, MMGCN, GRCN, DualGNN, SLMRec, BM3, FREEDOM, DRAGON, LATTICE,
MGCN, LayerGCN, SELFCFED_LGN, MVGAE, ItemKNNCBF), two baselines (BPR-MF, LightGCN) and the
newer models of upstream MMRec (LGMRec, SMORE, PGL, DA-MRS, MMGCF).
Beside the models:

* :mod:`.interface`: :class:`Recommender` and the variable types a model holds;
* :mod:`.registry`: names to classes (:func:`get_model`), configs from mappings;
* :mod:`.inputs`: a model's modality tables and edges, read from a dataset;
* :mod:`.edge_dropout`: the full user-item graph with a per-epoch edge sample of it
  (:class:`EdgeDropoutGraphs`, FREEDOM's and MMGCF's);
* :mod:`.kernels`, :mod:`.losses`, :mod:`.initializers`: the numerical pieces models share.

Adding a model is one file here (a config made with
:func:`~mirrorgrad_jax.config.config_class` and a registered :class:`Recommender`), one
packaged config in ``configs/``, its specific tests and a row in the docs' model table;
the model contract test (``tests/test_model_contract.py``) covers the rest.
"""

from mirrorgrad_jax.models.interface import (
    CHECKPOINTED,
    Constant,
    EpochSample,
    FrozenRandom,
    Recommender,
    TrainingCache,
    TrainingSetup,
    check_ready_to_rank,
)
from mirrorgrad_jax.models.edge_dropout import EdgeDropoutGraphs
from mirrorgrad_jax.models.kernels import dense, pairwise_scores
from mirrorgrad_jax.models.registry import available_models, build_config, get_model, register
from mirrorgrad_jax.models.bm3 import BM3, BM3Config
from mirrorgrad_jax.models.bprmf import BPRMF, BPRMFConfig
from mirrorgrad_jax.models.damrs import DAMRS, DAMRSConfig
from mirrorgrad_jax.models.dragon import DRAGON, DRAGONConfig
from mirrorgrad_jax.models.dualgnn import DualGNN, DualGNNConfig
from mirrorgrad_jax.models.freedom import FREEDOM, FREEDOMConfig
from mirrorgrad_jax.models.grcn import GRCN, GRCNConfig
from mirrorgrad_jax.models.itemknncbf import ItemKNNCBF, ItemKNNCBFConfig
from mirrorgrad_jax.models.lattice import LATTICE, LATTICEConfig
from mirrorgrad_jax.models.layergcn import LayerGCN, LayerGCNConfig
from mirrorgrad_jax.models.lgmrec import LGMRec, LGMRecConfig
from mirrorgrad_jax.models.lightgcn import LightGCN, LightGCNConfig
from mirrorgrad_jax.models.mgcn import MGCN, MGCNConfig
from mirrorgrad_jax.models.mmgcf import MMGCF, MMGCFConfig
from mirrorgrad_jax.models.mmgcn import MMGCN, MMGCNConfig
from mirrorgrad_jax.models.mvgae import MVGAE, MVGAEConfig
from mirrorgrad_jax.models.pgl import PGL, PGLConfig
from mirrorgrad_jax.models.selfcfed_lgn import SELFCFED_LGN, SELFCFED_LGNConfig
from mirrorgrad_jax.models.slmrec import SLMRec, SLMRecConfig
from mirrorgrad_jax.models.smore import SMORE, SMOREConfig
from mirrorgrad_jax.models.vbpr import VBPR, VBPRConfig

__all__ = [
    "available_models",
    "BM3",
    "BM3Config",
    "BPRMF",
    "BPRMFConfig",
    "build_config",
    "check_ready_to_rank",
    "dense",
    "CHECKPOINTED",
    "Constant",
    "DAMRS",
    "DAMRSConfig",
    "DRAGON",
    "DRAGONConfig",
    "DualGNN",
    "DualGNNConfig",
    "EdgeDropoutGraphs",
    "EpochSample",
    "FREEDOM",
    "FREEDOMConfig",
    "FrozenRandom",
    "get_model",
    "pairwise_scores",
    "GRCN",
    "GRCNConfig",
    "ItemKNNCBF",
    "ItemKNNCBFConfig",
    "LATTICE",
    "LATTICEConfig",
    "LayerGCN",
    "LayerGCNConfig",
    "LGMRec",
    "LGMRecConfig",
    "LightGCN",
    "LightGCNConfig",
    "MGCN",
    "MGCNConfig",
    "MMGCF",
    "MMGCFConfig",
    "MMGCN",
    "MMGCNConfig",
    "MVGAE",
    "MVGAEConfig",
    "PGL",
    "PGLConfig",
    "Recommender",
    "register",
    "SELFCFED_LGN",
    "SELFCFED_LGNConfig",
    "SLMRec",
    "SLMRecConfig",
    "SMORE",
    "SMOREConfig",
    "TrainingCache",
    "TrainingSetup",
    "VBPR",
    "VBPRConfig",
]
