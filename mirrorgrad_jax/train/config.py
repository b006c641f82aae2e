"""The two run configs: Mirror Gradient's settings and the trainer's, typed and checked on construction."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mirrorgrad_jax.config import Constraint, FiniteFloat, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed, UnitInterval, config_class
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.evaluation import DEFAULT_TOPK, METRICS

__all__ = ["LAYOUT_FIELDS", "METHODS", "MGConfig", "MethodConfig", "TrainConfig", "fit_topk", "training_method"]

#: TrainConfig fields that say where the run's arrays live, not what it computes.
LAYOUT_FIELDS = ("mesh", "shard_tables", "device_budget_mb")


def _valid_metric_in_topk(cfg: TrainConfig) -> bool:
    metric, _, k = cfg.valid_metric.lower().partition("@")
    return metric in METRICS and k.isdigit() and int(k) in cfg.topk


@config_class
class MGConfig:
    """Mirror Gradient settings (the reference's ``mg.yaml``: alpha1 1.0, alpha2 in {0.1, 0.2, 0.3}, beta 3).

    Attributes:
      enabled: train with MG (the reference's default) or plainly (``--not_mg``).
      alpha1, alpha2, beta: see :func:`mirrorgrad_jax.mirror_gradient`; with MG enabled
        ``alpha1 > alpha2 > 0`` (the paper's condition: otherwise the mirror iteration does
        not descend).
      apply_to: ``"gradient"`` (reference) or ``"update"``.
      schedule: ``"reference"`` (batch index restarts every epoch), ``"global"`` (never
        restarts) or ``"algorithm1"`` (see :func:`mirrorgrad_jax.is_mirror_batch`).
    """

    enabled: bool = True
    alpha1: FiniteFloat = 1.0
    alpha2: FiniteFloat = 0.2
    beta: PositiveInt = 3
    apply_to: Literal["gradient", "update"] = "gradient"
    schedule: Literal["reference", "global", "algorithm1"] = "reference"

    constraints = (
        Constraint(
            ("alpha1", "alpha2"),
            lambda mg: not mg.enabled or mg.alpha1 > mg.alpha2 > 0,
            "must satisfy alpha1 > alpha2 > 0 with MG enabled (the paper's condition; otherwise the mirror iteration does not descend)",
        ),
    )

    def inert_fields(self) -> tuple[str, ...]:
        """The fields that cannot change a run with these settings: every one but ``enabled`` when MG is off."""
        return tuple(f.name for f in dataclasses.fields(self) if f.name != "enabled") if not self.enabled else ()


#: The names ``--method`` accepts: plain training, Mirror Gradient, and the two-pass methods of MethodConfig.
METHODS = ("plain", "mg", "sam", "asam", "gnp")


#: Each two-pass method's ascent radius when ``MethodConfig.rho`` is not given.
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5}


@config_class
class MethodConfig:
    """A flat-minima method other than Mirror Gradient (which :class:`MGConfig` configures).

    Every batch takes two gradient evaluations (:mod:`mirrorgrad_jax.optim.sharpness`):

    Attributes:
      name: ``"none"`` (plain training, or MG when ``MGConfig.enabled``), ``"sam"``,
        ``"asam"`` or ``"gnp"`` (the gradient-norm penalty). With any of the last three,
        MG must be off.
      rho: the ascent radius of SAM and ASAM; unset, each method's own default: SAM 0.05
        (Foret et al.'s), ASAM 0.5 (Kwon et al.'s, whose radius is relative to each weight;
        :func:`~mirrorgrad_jax.optim.asam`'s default too). Stored resolved, so a recorded
        config always names the radius it trained with.
      eta: ASAM's floor added to ``|w|`` (0.01, Kwon et al.'s).
      alpha: the gradient-norm penalty's weight of the perturbed gradient, in [0, 1]
        (0.5; 1 is SAM with ``rho = radius``).
      radius: the gradient-norm penalty's finite-difference step (0.05).
    """

    name: Literal["none", "sam", "asam", "gnp"] = "none"
    rho: PositiveFloat | None = None
    eta: NonNegativeFloat = 0.01
    alpha: UnitInterval = 0.5
    radius: PositiveFloat = 0.05

    def __post_init__(self) -> None:
        if self.rho is None:  # the method's own default (a frozen dataclass: normalised in place once)
            object.__setattr__(self, "rho", DEFAULT_RHO.get(self.name, DEFAULT_RHO["sam"]))

    def inert_fields(self) -> tuple[str, ...]:
        """The knobs the selected method does not read."""
        used = {"none": (), "sam": ("rho",), "asam": ("rho", "eta"), "gnp": ("alpha", "radius")}[self.name]
        return tuple(f.name for f in dataclasses.fields(self) if f.name != "name" and f.name not in used)


def training_method(mg: MGConfig, method: MethodConfig) -> str:
    """The one name of what a run trains with: ``"plain"``, ``"mg"``, ``"sam"``, ``"asam"`` or ``"gnp"``.

    Raises:
      ConfigError: MG enabled together with another two-pass method.
    """
    if method.name != "none" and mg.enabled:
        raise ConfigError(f"MG and {method.name} cannot both train one run: turn MG off (--no-mg, or --method {method.name})")
    if method.name != "none":
        return method.name
    return "mg" if mg.enabled else "plain"


@config_class
class TrainConfig:
    """Trainer settings; defaults are the reference's (``overall.yaml``) unless noted.

    Attributes:
      epochs: cap on training epochs (1000).
      batch_size: training rows per batch (2048); the last smaller batch is kept.
      learning_rate: initial learning rate (1e-3).
      optimizer: one of adam (torch defaults), sgd, adagrad, rmsprop (torch formulas).
      weight_decay: coupled L2 added to the gradient inside the optimizer (0; SLMRec 1e-4).
      lr_schedule: ``(s, T)``: per-epoch learning rate ``lr * s ** (epoch / T)`` ((1.0, 50): constant;
        LATTICE, MGCN, SMORE and PGL use (0.96, 50) in their packaged configs; the
        model alone does not carry it, and ``mirrorgrad train --model X`` says so).
      clip_grad_norm: clip the gradient the optimizer steps with to this global norm, as the
        reference trainer: on a mirror batch only the mirror step's, under SAM and ASAM the
        perturbed point's, under the gradient-norm penalty the combined gradient; ``None``
        (the reference's default) does not clip.
      valid_metric: early-stopping metric such as ``recall@20``, its cutoff one of
        ``topk``; the MG reference uses ``recall@5`` (upstream MMRec ``recall@20``).
      patience: stop after ``patience + 1`` consecutive non-improving epochs (20).
      min_epochs: never stop early before this many epochs (0: the reference's rule alone).
      eval_batch_size: users per evaluation block (4096).
      topk: ranking cutoffs ((5, 10, 20, 50)).
      seed: seeds the host RNG (shuffles, negatives) and the JAX keys (999).
      dispatch: ``"scan"`` (an epoch's full batches in one jitted scan) or
        ``"per_batch"`` (one jitted call per batch; always used for schedules other
        than ``"reference"``).
      mesh: ``None`` (one device, the default), ``"auto"`` (every device on ``data``) or a
        spec such as ``"data=2,model=2"``: train and evaluate over that device mesh (see
        :mod:`mirrorgrad_jax.devices`). The same losses and metrics as one device, up to
        float32 summation order.
      shard_tables: with a mesh, row-shard every table (embeddings, features, graph edges)
        over the ``model`` axis.
      device_budget_mb: with a mesh, a table whose replica exceeds this many MiB is
        row-sharded over the whole mesh; ``None``: 1/8 of one device's memory.
      zero_grad: what a batch does to parameters its loss leaves out, for models that
        declare ``first_batch_params`` (LATTICE's graph learner, trained only from the
        first batch of an epoch). ``"zeros"`` (default): the optimizer sees a zero gradient
        and Adam keeps moving them on their momentum, as ``optimizer.zero_grad()`` does in
        PyTorch 1.13, the version the MG reference's environment pins (torchaudio 0.13.1)
        and so the one behind its published numbers. ``"none"``: they are skipped (no
        update, no moment decay, no step count), as PyTorch >= 2.0's
        ``zero_grad(set_to_none=True)`` leaves them.
    """

    epochs: PositiveInt = 1000
    batch_size: PositiveInt = 2048
    learning_rate: PositiveFloat = 1e-3
    optimizer: Literal["adam", "sgd", "adagrad", "rmsprop"] = "adam"
    weight_decay: NonNegativeFloat = 0.0
    lr_schedule: tuple[PositiveFloat, PositiveFloat] = (1.0, 50.0)
    clip_grad_norm: PositiveFloat | None = None
    valid_metric: str = "recall@5"
    patience: NonNegativeInt = 20
    min_epochs: NonNegativeInt = 0
    eval_batch_size: PositiveInt = 4096
    topk: tuple[PositiveInt, ...] = DEFAULT_TOPK
    seed: Seed = 999
    dispatch: Literal["scan", "per_batch"] = "scan"
    mesh: str | None = None
    shard_tables: bool = False
    device_budget_mb: PositiveFloat | None = None
    zero_grad: Literal["zeros", "none"] = "zeros"

    constraints = (
        Constraint(("topk",), lambda cfg: len(cfg.topk) > 0, "must hold at least one cutoff"),
        Constraint(
            ("min_epochs", "epochs"),
            lambda cfg: cfg.min_epochs <= cfg.epochs,
            "must satisfy min_epochs <= epochs (early stopping cannot wait past the last epoch)",
        ),
        Constraint(
            ("valid_metric", "topk"),
            _valid_metric_in_topk,
            "must name a metric (recall, ndcg, precision or map) at one of the cutoffs in topk, like 'recall@20'",
        ),
    )

    def __post_init__(self):
        object.__setattr__(self, "valid_metric", self.valid_metric.lower())

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based): ``lr * s ** (epoch / T)``."""
        factor, period = self.lr_schedule
        return self.learning_rate * factor ** (epoch / period)

    def steps_per_epoch(self, num_train: int) -> int:
        """Batches in one epoch over ``num_train`` training rows: ``ceil(num_train / batch_size)``.

        The last, smaller batch is kept, as the reference's data loader keeps it. This count
        fixes the learning-rate schedule's step length and which batches Mirror Gradient mirrors.

        Raises:
          ValueError: ``num_train`` is negative.
        """
        if num_train < 0:
            raise ValueError(f"num_train must be >= 0, got {num_train}")
        return -(-num_train // self.batch_size)


def fit_topk(cfg: TrainConfig, num_items: int) -> tuple[TrainConfig, str | None]:
    """``cfg`` with the ranking cut-offs a catalogue of ``num_items`` items can rank, and a note of what was dropped.

    A cut-off larger than the catalogue cannot be ranked (a top-50 list of 30 items). Two
    answers were possible: refuse the run, or rank at the cut-offs that fit. The defaults
    ``(5, 10, 20, 50)`` are the paper's protocol for catalogues of thousands of items, and a
    user who tries a small catalogue of their own has usually not chosen them: they expect the
    run to go ahead and report what can be measured, so the larger cut-offs are dropped and
    the note (for the log, once) says which. The metric the run SELECTS on (``valid_metric``)
    decides its outcome, so it is never swapped silently for another: when its cut-off does not
    fit, the run is refused with what to choose instead.

    Args:
      cfg: the trainer settings.
      num_items: the catalogue's size.

    Returns:
      ``(cfg, None)`` when every cut-off fits (the same object: nothing changes), else
      the config with the fitting cut-offs and a one-line note.

    Raises:
      ConfigError: ``valid_metric``'s cut-off is larger than the catalogue.
    """
    too_large = [k for k in cfg.topk if k > num_items]
    if not too_large:
        return cfg, None
    metric, _, k = cfg.valid_metric.partition("@")
    kept = tuple(c for c in cfg.topk if c <= num_items)
    if int(k) > num_items:
        instead = (
            f"--valid-metric {metric}@{max(kept)}" if kept
            else f"cut-offs of at most {num_items} in train.topk of a config file, and a valid_metric at one of them"
        )  # fmt: skip
        raise ConfigError(
            f"the catalogue has {num_items} items, fewer than the cut-off of valid_metric {cfg.valid_metric!r}: "
            f"no top-{k} list can be ranked; choose {instead}"
        )
    note = (
        f"note: the catalogue has {num_items} items, fewer than the cut-off(s) {too_large} of topk: "
        f"ranking metrics are reported at {list(kept)} only"
    )
    return dataclasses.replace(cfg, topk=kept), note
