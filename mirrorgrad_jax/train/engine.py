"""The compiled pieces of one training run: loss, train steps, epoch scans and scoring.

:class:`EpochEngine` splits a model into parameters, its training cache and constants,
jits the normal and mirror steps (and a model's first-batch steps), the scans over an
epoch's blocks, and a scoring function for the evaluator; :meth:`EpochEngine.run_epoch`
trains one epoch. Nothing here knows a particular model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.devices import Placement
from mirrorgrad_jax.models import Recommender, TrainingCache
from mirrorgrad_jax.optim import is_mirror_batch, make_block_step, make_train_steps, plan_epoch
from mirrorgrad_jax.train.config import MGConfig, TrainConfig

__all__ = ["EpochEngine", "to_host"]


class EpochEngine:
    """Compiled pieces of one run: loss, steps, epoch scans and scoring.

    The model is split into parameters, its training cache and everything else
    (constants). The cache is threaded through every step in order, so a model may read
    what an earlier step of the epoch cached (LATTICE's item graph) and evaluation sees
    what the last training forward wrote (stale evaluation).

    With ``skippable``, ``tx`` partitions the model's first-batch parameters and every step
    but a first batch's first pass tells it to skip them (``skip=True``).

    With ``perturbed``, ``tx`` is a two-pass method in opaque mode (SAM, ASAM, the
    gradient-norm penalty): every step hands it the gradient of the same batch at the point
    it asks for, so every batch is alike and an epoch is one scan. The last training forward
    of such a step is its second pass, at the perturbed point: the cache a step leaves
    (LATTICE's item graph for the rest of the epoch, a stale-evaluation model's
    representations) is computed there, at ``w + e``, as a PyTorch SAM loop whose second
    forward runs at the perturbed weights would leave it (:func:`~mirrorgrad_jax.optim.make_train_steps`).

    With a :class:`~mirrorgrad_jax.devices.Placement`, parameters, cache and constants
    are placed on its mesh, every jitted step returns parameters, optimizer state and
    cache on those same shardings (so they stay put across steps and epochs), and
    batches are split over ``data``. Without one, nothing of that runs.
    """

    def __init__(
        self,
        model: Recommender,
        tx,
        mg: MGConfig,
        train_config: TrainConfig,
        placement: Placement | None = None,
        *,
        perturbed: bool = False,
        skippable: bool = False,
    ):
        self.graphdef, params, cache, consts = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.mg, self.cfg = mg, train_config
        self.placement = placement
        self._const_sources: list[Any] = []
        self._const_placed: list[Any] = []
        if placement is None:
            self.params, self.cache, self.consts = params, cache, consts
        else:
            # The module keeps host copies (its pre_epoch reads them there); the devices hold
            # only the placed arrays, not also a full copy on the first device.
            params, cache, consts = to_host(params), to_host(cache), to_host(consts)
            nnx.update(model, params, cache, consts)
            self.params = placement.put(params)
            self.cache = placement.put(cache)
            self.consts = self._place_constants(consts)
            self.param_shardings = placement.shardings(self.params)
            self.cache_shardings = placement.shardings(self.cache)
            self.opt_shardings = placement.shardings(jax.eval_shape(tx.init, self.params))
        self.first_batch = bool(type(model).first_batch_params)
        graphdef = self.graphdef

        def make_loss(method: str):
            def loss_fn(p, batch, key, consts, cache):
                model = nnx.merge(graphdef, p, cache, consts, copy=True)
                loss = getattr(model, method)(batch, key)
                return loss, nnx.state(model, TrainingCache)

            return loss_fn

        def scores_fn(state, users):
            p, cache, consts = state
            return nnx.merge(graphdef, p, cache, consts, copy=True).scores(users)

        self.scores_fn = scores_fn
        # ``skip`` reaches a skippable partition (TrainConfig.zero_grad == "none"): the
        # first-batch group's state stays put on every other step.
        skip = {"skip": True} if skippable else {}
        first_skip = {"skip": False} if skippable else {}
        common = dict(has_aux=True, mirror=mg.enabled, both_losses=True, thread_aux=True, perturbed_pass=perturbed)
        steps = make_train_steps(make_loss("loss"), tx, update_kwargs=skip, **common)
        donate: dict[str, Any] = dict(donate_argnums=(0, 1))
        if placement is not None:
            # Parameters, optimizer state and cache come back on the shardings they went in with.
            donate["out_shardings"] = (self.param_shardings, self.opt_shardings, placement.replicated, self.cache_shardings)
        self.normal = jax.jit(steps.normal, **donate)
        self.mirror = jax.jit(steps.mirror, **donate)
        if self.first_batch:
            # Batch 0 of an epoch: the model's first-batch loss, every parameter updated;
            # the mirror pass (MG) uses the ordinary loss and skips the first-batch group. A
            # two-pass method takes both its gradients of that batch from the first-batch loss.
            mirror_pass = {} if perturbed else {"mirror_pass_loss_fn": make_loss("loss"), "mirror_pass_update_kwargs": skip}
            first = make_train_steps(make_loss("first_batch_loss"), tx, update_kwargs=first_skip, **mirror_pass, **common)
            self.first_normal = jax.jit(first.normal, **donate)
            self.first_mirror = jax.jit(first.mirror, **donate)
        block = make_block_step(steps, mg.beta, thread_aux=True) if mg.enabled else None

        def scan_normal(p, s, batches, keys, consts, cache):
            def body(carry, xs):
                p, s, cache = carry
                p, s, loss, cache = steps.normal(p, s, *xs, consts, cache)
                return (p, s, cache), loss

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (batches, keys))
            return p, s, losses, cache

        def scan_blocks(p, s, blocks, keys, consts, cache):
            def body(carry, xs):
                p, s, cache = carry
                p, s, losses, cache = block(p, s, *xs, consts, cache)
                return (p, s, cache), losses

            (p, s, cache), losses = jax.lax.scan(body, (p, s, cache), (blocks, keys))
            return p, s, losses.reshape(-1, 2), cache

        self.scan_normal = jax.jit(scan_normal, **donate)
        self.scan_blocks = jax.jit(scan_blocks, **donate)

    def refresh_constants(self, model: Recommender) -> None:
        """Takes the model's constants again (``pre_epoch`` may have redrawn samples)."""
        _, _, _, consts = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.consts = consts if self.placement is None else self._place_constants(consts)

    def take_cache(self, model: Recommender) -> None:
        """Takes the model's training cache (after a resume wrote it into the model)."""
        _, _, cache, _ = nnx.split(model, nnx.Param, TrainingCache, ...)
        self.cache = cache if self.placement is None else self.placement.put(cache)

    def _place_constants(self, consts: Any) -> Any:
        """Constants on the mesh; those ``pre_epoch`` left as they were keep their placed copy."""
        leaves, treedef = jax.tree.flatten(consts)
        shardings = jax.tree.leaves(self.placement.shardings(consts))
        same = len(leaves) == len(self._const_sources)
        placed = [
            self._const_placed[i] if same and leaf is self._const_sources[i] else self.placement.put(leaf, sharding)
            for i, (leaf, sharding) in enumerate(zip(leaves, shardings))
        ]
        self._const_sources, self._const_placed = leaves, placed
        return jax.tree.unflatten(treedef, placed)

    def init_opt_state(self, tx) -> Any:
        """``tx.init(params)``, created directly on the optimizer state's shardings with a mesh."""
        if self.placement is None:
            return tx.init(self.params)
        return jax.jit(tx.init, out_shardings=self.opt_shardings)(self.params)

    def place_opt_state(self, opt_state: Any) -> Any:
        """The optimizer state on its shardings (after the host changed a leaf, e.g. the learning rate)."""
        return opt_state if self.placement is None else self.placement.put(opt_state, self.opt_shardings)

    def _put_batches(self, batches: np.ndarray) -> jax.Array:
        """A host batch (or stack of batches) on the device(s): rows (the last axis) split over ``data``."""
        return jnp.asarray(batches) if self.placement is None else self.placement.put_batch(batches, axis=-1)

    def run_epoch(self, params, opt_state, full: np.ndarray | None, last: np.ndarray | None, key, global_batch: int, steps_per_epoch: int):
        """Trains one epoch.

        The batches are dispatched as :func:`~mirrorgrad_jax.optim.plan_epoch` groups them:
        whole MG blocks (or, without MG, all normal batches) in one jitted scan, the rest
        as single steps. Scans run only under the reference schedule: its blocks start at
        every epoch's first batch.

        Returns:
          (tuple): ``(params, opt_state, losses)`` with ``losses`` of shape ``(batches, 2)``:
          per batch, the first-pass loss and the loss of the last pass (the mirror pass
          on mirror batches). The training cache is left in ``self.cache``.
        """
        mg, cfg, consts = self.mg, self.cfg, self.consts
        cache = self.cache
        n_full = 0 if full is None else len(full)
        keys = jax.random.split(key, steps_per_epoch)
        if self.placement is not None:
            keys = self.placement.put(keys, self.placement.replicated)
        mirror = [
            mg.enabled and bool(is_mirror_batch(global_batch + index, mg.beta, schedule=mg.schedule, steps_per_epoch=steps_per_epoch))
            for index in range(n_full + (last is not None))
        ]
        scan = cfg.dispatch == "scan" and (not mg.enabled or mg.schedule == "reference")
        losses = []

        def single(p, s, c, b, index):
            if self.first_batch and index == 0:
                step = self.first_mirror if mirror[index] else self.first_normal
            else:
                step = self.mirror if mirror[index] else self.normal
            p, s, loss, c = step(p, s, self._put_batches(b), keys[index], consts, c)
            losses.append(loss[None])
            return p, s, c

        for segment in plan_epoch(mirror[:n_full], mg.beta, scan=scan, first_alone=self.first_batch):
            start, stop = segment.start, segment.stop
            if segment.kind == "step":
                params, opt_state, cache = single(params, opt_state, cache, full[start], start)
            elif segment.kind == "scan":
                params, opt_state, scanned, cache = self.scan_normal(
                    params, opt_state, self._put_batches(full[start:stop]), keys[start:stop], consts, cache
                )
                losses.append(scanned)
            else:
                blocks = (stop - start) // mg.beta
                stacked = self._put_batches(full[start:stop].reshape((blocks, mg.beta) + full.shape[1:]))
                block_keys = keys[start:stop].reshape(blocks, mg.beta)
                params, opt_state, scanned, cache = self.scan_blocks(params, opt_state, stacked, block_keys, consts, cache)
                losses.append(scanned)
        if last is not None:
            params, opt_state, cache = single(params, opt_state, cache, last, n_full)
        self.cache = cache
        flat = np.concatenate([np.asarray(x).reshape(-1, 2) for x in losses]) if losses else np.zeros((0, 2))
        return params, opt_state, flat


def to_host(tree: Any) -> Any:
    """Numpy copies of a tree's arrays (PRNG keys stay as they are).

    Real copies (``np.array``), not views: on a CPU ``np.asarray`` would alias, and so keep
    alive, the first device's buffer.
    """

    def host(leaf):
        if isinstance(leaf, jax.Array) and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return np.array(leaf)
        return leaf

    return jax.tree.map(host, tree)
