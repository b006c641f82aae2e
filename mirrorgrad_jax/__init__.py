"""mirrorgrad-jax: Mirror Gradient as an optax transformation, with Flax multimodal recommenders."""

from mirrorgrad_jax.transform import (
    MirrorGradientState,
    find_mirror_state,
    implicit_penalty,
    is_mirror_batch,
    mirror_gradient,
    mirror_pass_pending,
)

__version__ = "0.1.0"

__all__ = [
    "MirrorGradientState",
    "find_mirror_state",
    "implicit_penalty",
    "is_mirror_batch",
    "mirror_gradient",
    "mirror_pass_pending",
    "__version__",
]
