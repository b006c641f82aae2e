"""The optimizer a run uses: torch's optimizers in optax, Mirror Gradient around them, a per-epoch learning rate.

The inner optimizer sits in ``optax.inject_hyperparams`` so the trainer can write each
epoch's learning rate into the optimizer state (:func:`set_learning_rate`) and read it
back (:func:`optimizer_learning_rate`); it is wrapped in
:func:`~mirrorgrad_jax.mirror_gradient` (transparent mode) when MG is enabled.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mirrorgrad_jax.errors import TrainingError
from mirrorgrad_jax.optim import asam, gradient_norm_penalty, mirror_gradient, sam, skippable_partition, torch_clip_by_global_norm
from mirrorgrad_jax.train.config import MethodConfig, MGConfig, TrainConfig, training_method

__all__ = [
    "FIRST_BATCH_GROUP",
    "build_optimizer",
    "first_batch_labels",
    "optimizer_learning_rate",
    "set_learning_rate",
    "torch_optimizer",
]

#: Label of the parameters a model updates only from its first batch of an epoch.
FIRST_BATCH_GROUP = "first_batch"


def torch_optimizer(name: str, learning_rate: Any, weight_decay: float) -> optax.GradientTransformation:
    """torch's ``Adam``, ``SGD``, ``Adagrad`` or ``RMSprop`` (its default hyper-parameters and formulas) in optax.

    ``weight_decay`` is torch's coupled L2: added to the gradient before the optimizer.
    """
    base = {
        "adam": lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8),
        "sgd": lambda lr: optax.sgd(lr),
        "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-10),
        "rmsprop": lambda lr: optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    }[name](learning_rate)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def build_optimizer(
    train_config: TrainConfig,
    mg: MGConfig,
    steps_per_epoch: int,
    *,
    first_batch_labels: Any = None,
    method: MethodConfig = MethodConfig(),
) -> optax.GradientTransformation:
    """The optimizer the trainer uses.

    Args:
      train_config: optimizer, learning rate, weight decay, clipping.
      mg: Mirror Gradient settings.
      steps_per_epoch: batches per epoch (the reference schedule restarts there).
      first_batch_labels: for models with ``first_batch_params``: a pytree of labels
        over the parameters, :data:`FIRST_BATCH_GROUP` for those parameters. They then
        get their own optimizer state, which steps called with ``skip=True`` leave alone.
      method: SAM, ASAM or the gradient-norm penalty around the inner optimizer (opaque
        mode: the step passes ``grad_fn``); clipping then acts on the gradient the inner
        optimizer steps with.

    Raises:
      ConfigError: MG and another two-pass method together.
    """
    cfg = train_config

    def factory(learning_rate):
        opt = torch_optimizer(cfg.optimizer, learning_rate, cfg.weight_decay)
        if first_batch_labels is not None:
            opt = skippable_partition(opt, first_batch_labels, FIRST_BATCH_GROUP)
        return opt

    inner = optax.inject_hyperparams(factory)(learning_rate=cfg.learning_rate)
    name = training_method(mg, method)
    if name != "mg":
        if cfg.clip_grad_norm is not None:
            inner = optax.chain(torch_clip_by_global_norm(cfg.clip_grad_norm), inner)
        if name == "sam":
            return sam(inner, method.rho)
        if name == "asam":
            return asam(inner, method.rho, method.eta)
        if name == "gnp":
            return gradient_norm_penalty(inner, method.alpha, method.radius)
        return inner
    return mirror_gradient(
        inner,
        mg.alpha1,
        mg.alpha2,
        mg.beta,
        mode="transparent",
        apply_to=mg.apply_to,
        schedule=mg.schedule,
        steps_per_epoch=steps_per_epoch,
        clip_grad_norm=cfg.clip_grad_norm,
    )


def _is_injected(node: Any) -> bool:
    # optax.inject_hyperparams returns InjectStatefulHyperparamsState, which is NOT a
    # subclass of InjectHyperparamsState: match both.
    return isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def set_learning_rate(opt_state: Any, value: float) -> Any:
    """Returns ``opt_state`` with every injected ``learning_rate`` set to ``value``.

    Raises:
      TrainingError: the state holds no injected learning rate.
    """
    found = []

    def fix(node):
        if _is_injected(node) and "learning_rate" in node.hyperparams:
            found.append(node)
            hp = dict(node.hyperparams)
            hp["learning_rate"] = jnp.asarray(value, dtype=jnp.asarray(hp["learning_rate"]).dtype)
            return node._replace(hyperparams=hp)
        return node

    out = jax.tree.map(fix, opt_state, is_leaf=_is_injected)
    if not found:
        raise TrainingError("the optimizer state has no injected learning_rate; the learning-rate schedule cannot be applied")
    return out


def optimizer_learning_rate(opt_state: Any) -> float:
    """The learning rate held in the (first) ``inject_hyperparams`` state inside ``opt_state``."""
    nodes = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_injected) if _is_injected(n)]
    if not nodes:
        raise ValueError("no optax.inject_hyperparams state with a learning_rate in this optimizer state")
    return float(nodes[0].hyperparams["learning_rate"])


def first_batch_labels(model_cls: type, params: Any) -> Any:
    """Labels over ``params``: :data:`FIRST_BATCH_GROUP` under the model's ``first_batch_params``, else ``"others"``.

    Raises:
      TrainingError: ``first_batch_params`` names an attribute that holds no parameters.
    """
    names = set(model_cls.first_batch_params)
    known = {str(path[0].key) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(names - known)
    if missing:
        raise TrainingError(f"{model_cls.__name__}.first_batch_params names {missing}, which hold no parameters")
    return jax.tree_util.tree_map_with_path(lambda path, _: FIRST_BATCH_GROUP if str(path[0].key) in names else "others", params)
