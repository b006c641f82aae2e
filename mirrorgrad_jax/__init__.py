"""mirrorgrad-jax: Mirror Gradient as an optax transformation, with Flax multimodal recommenders.

The top level holds the transformation (the core names of :mod:`mirrorgrad_jax.optim`;
the other flat-minima methods and step builders are imported from there); the
rest of the library is laid out in subpackages, each importing only those below it:

====================  ==============================================================
``optim``             ``mirror_gradient``, its schedule, train steps, NNX integration
``devices``           the device mesh, where arrays live, several processes
``graph``             user-item, item-item and user-user graphs; sparse propagation
``data``              the dataset type, the MMRec on-disk format, built-in sets, sampling
``prepare``           raw Amazon files or your own catalogue to a dataset folder
``models``            the Flax recommenders (installed from the repository's ``models/``)
``evaluation``        full ranking, the reference metrics, early stopping
``train``             configs, the jitted trainer, checkpoints, grids
``analysis``          perturbations, flatness, robustness, MG-off/on comparisons, replay
``cli``               the ``mirrorgrad`` command
====================  ==============================================================

Module paths of earlier releases (``mirrorgrad_jax.trainer``, ``mirrorgrad_jax.transform``,
...) still import, with a ``DeprecationWarning`` naming the new place.
"""

from mirrorgrad_jax import _legacy
from mirrorgrad_jax.errors import CheckpointError, ConfigError, UserInputError
from mirrorgrad_jax.optim import (
    MirrorGradientState,
    find_mirror_state,
    implicit_penalty,
    is_mirror_batch,
    make_train_steps,
    mirror_gradient,
    mirror_pass_pending,
    plan_epoch,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MirrorGradientState",
    "UserInputError",
    "find_mirror_state",
    "implicit_penalty",
    "is_mirror_batch",
    "make_train_steps",
    "mirror_gradient",
    "mirror_pass_pending",
    "plan_epoch",
    "__version__",
]

_legacy.install()
