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

import os as _os
import sys as _sys
import warnings as _warnings


def _checkout_mismatch(models_dir: str, package_dir: str) -> str | None:
    """Why ``models_dir`` (this package) and ``package_dir`` (``mirrorgrad_jax``) are two copies of the project, or None.

    They belong together when the models sit inside the package (an installed wheel) or
    beside it (a checkout: ``models/`` next to ``mirrorgrad_jax/``), links resolved. An
    editable install maps ``mirrorgrad_jax.models`` to its own checkout's ``models/``
    whatever ``sys.path`` says, so ``PYTHONPATH=<another checkout>`` runs that checkout's
    library with the installed checkout's models: the mix this names.
    """
    here = _os.path.realpath(models_dir)
    package = _os.path.realpath(package_dir)
    if here in (_os.path.realpath(_os.path.join(package, "models")), _os.path.realpath(_os.path.join(package, "..", "models"))):
        return None
    return (
        f"mirrorgrad_jax.models is loaded from {here} but mirrorgrad_jax from {package}: two copies of the "
        f"project are mixed (an editable install maps mirrorgrad_jax.models to its own checkout); link "
        f"{_os.path.join(package, 'models')} to ../models, or install the checkout you mean to run"
    )


_mixed = _checkout_mismatch(_os.path.dirname(__file__), _os.path.dirname(_sys.modules["mirrorgrad_jax"].__file__))
if _mixed:
    _warnings.warn(_mixed, RuntimeWarning, stacklevel=2)

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
