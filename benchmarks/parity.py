"""Step-level and trajectory parity with the PyTorch reference, model by model (issue 30).

For each model: the reference's own code (its ``Config``, ``RecDataset``,
``TrainDataLoader``, model class and ``Trainer``, run through the shims of
``vs_reference.py``) builds the model in float64 on a small MMRec folder and exports

* its initial ``state_dict``;
* the first ``--steps`` batches its own ``TrainDataLoader`` yields (users, positives,
  sampled negatives, as it yields them);
* at step 0 (batch 0): the loss, the outputs of its loss modules (``BPRLoss``,
  ``EmbLoss``, ...: recorded, listed in the report), every parameter's gradient, and the
  full-ranking scores of a block of users;
* the parameters after ``--steps`` optimizer steps on those batches, taken by the
  reference trainer's own ``_train_epoch`` (its optimizer, its MG branch), MG off and MG on,
  and the loss of every step.

Then, in this project's venv with JAX in float64, our model is built on the same folder,
the reference's weights are loaded through the model's map (``benchmarks/parity_maps.py``:
names, shapes, transposes), the same quantities are computed on the same batches, and the
same steps are run through the library's own optimizer and step code
(:func:`mirrorgrad_jax.train.build_optimizer` and :class:`mirrorgrad_jax.train.EpochEngine`,
as :func:`mirrorgrad_jax.train.train` uses them).

Differences are relative to the reference, tensor by tensor: ``max|ours - ref| / max|ref|``
(the worst tensor is named). After N steps the difference is taken on the DISPLACEMENT
from the common initial weights, ``max|(ours_N - init) - (ref_N - init)| / max|ref_N - init|``:
the weights themselves hardly move in a few steps, so a relative difference of the weights
would hide an optimizer that is wrong. Tolerances: 1e-5 (loss, gradients, scores), 1e-4
(after N steps).

Exchange between the two processes: one ``.npz`` of plain numeric arrays (``np.savez``,
read back with ``allow_pickle=False``), keys ``section:name`` with the name escaped
(:func:`write_exchange`, :func:`read_exchange`).

Usage::

    python benchmarks/parity.py --reference /tmp/mgref --mmrec /tmp/mmrecref \\
        --ref-python /tmp/refvenv/bin/python [--models vbpr,bprmf,lightgcn] [--steps 6] \\
        [--out benchmarks/results/parity.md --jsonl benchmarks/results/parity_runs.jsonl]
    python benchmarks/parity.py --list-params lightgcn   (our parameter paths and shapes; no reference needed)

``--reference`` is the Mirror-Gradient checkout (VBPR and the other thirteen models of
the paper); ``--mmrec`` the MMRec checkout (BPR, LightGCN and the newer models), needed
only for models whose map says ``source="mmrec"``. Adding a model: see the docstring of
``benchmarks/parity_maps.py``.

Only the standard library (and ``reporting`` / ``parity_maps``, which import nothing
else at their tops) is imported at the top of this file: the reference's process runs it
with the reference's Python, which has no JAX.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from parity_maps import PARITY_MAPS, ParityMap
from reporting import command_as_run, describe_machine, markdown_table, report_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 999
MG_SETTINGS = {"alpha1": 1.0, "alpha2": 0.2, "beta": 3}
STEP_TOLERANCE = 1e-5
TRAJECTORY_TOLERANCE = 1e-4
SECTIONS = ("init", "batch", "step0", "grad", "scores", "final_plain", "final_mg", "losses", "terms", "meta")
DATASET = {"num_users": 300, "num_items": 200, "interactions_per_user": 10.0, "modalities": {"image": 32, "text": 16}, "seed": 0}


class ParityError(Exception):
    """A map that does not fit a model, an exchange file that is not one: the message names the key."""


# ---------------------------------------------------------------------------------------
# The exchange file: plain arrays, no pickle.
# ---------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def escape_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.-]`` as ``%XX`` (a zip member name safe anywhere)."""
    return _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), name)


def unescape_name(name: str) -> str:
    return re.sub(r"(%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), name)


def write_exchange(path: str, sections: dict, meta: dict) -> None:
    """Writes ``{section: {name: array}}`` and a JSON ``meta`` as one ``.npz`` of numeric arrays.

    Raises:
      ParityError: an unknown section, or an array that is not numeric (object arrays would need pickle).
    """
    import numpy as np

    flat = {}
    for section, arrays in sections.items():
        if section not in SECTIONS or section == "meta":
            raise ParityError(f"unknown exchange section {section!r}")
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise ParityError(f"{section}:{name} has dtype {array.dtype}; the exchange holds numbers only")
            flat[f"{section}:{escape_name(name)}"] = array
    flat["meta:json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **flat)


def read_exchange(path: str) -> tuple[dict, dict]:
    """The ``(sections, meta)`` of an exchange file; refuses pickled members and unknown keys.

    Raises:
      ParityError: a key outside ``section:name``, an unknown section, no ``meta:json``.
    """
    import numpy as np

    sections: dict = {s: {} for s in SECTIONS if s != "meta"}
    meta = None
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                section, sep, name = key.partition(":")
                if not sep or section not in SECTIONS:
                    raise ParityError(f"{path}: {key!r} is not a key of the exchange format (section:name)")
                if key == "meta:json":
                    meta = json.loads(data[key].tobytes().decode())
                else:
                    sections[section][unescape_name(name)] = data[key]
    except ValueError as err:  # allow_pickle=False on an object array
        raise ParityError(f"{path}: not a plain-array exchange file ({err})") from None
    if meta is None:
        raise ParityError(f"{path}: no meta:json")
    return sections, meta


# ---------------------------------------------------------------------------------------
# Maps and comparisons (pure NumPy; tested in tests/test_parity.py).
# ---------------------------------------------------------------------------------------


def apply_map(pmap: ParityMap, reference: dict, our_shapes: dict, what: str = "parameter") -> dict:
    """Reference tensors (by reference key) -> ours (by our path), transposed where the map says.

    Strict: every mapped reference key must be present in ``reference``, every one of our
    paths must be produced exactly once, shapes must agree after the transform, and a
    reference key neither mapped nor ignored is an error.

    Args:
      pmap: the model's map.
      reference: reference key -> array (a state_dict, gradients, ...).
      our_shapes: our path -> shape, for every parameter we have.
      what: how the error messages name the tensors.

    Raises:
      ParityError: naming the key that does not fit.
    """
    import numpy as np

    out = {}
    entries = pmap.param_entries()
    for ref_key, path, transform in entries:
        if ref_key not in reference:
            raise ParityError(f"{pmap.reference}: the map names reference {what} {ref_key!r}, which the reference does not have "
                              f"(it has {sorted(reference)})")  # fmt: skip
        if path not in our_shapes:
            raise ParityError(f"{pmap.reference}: the map sends {ref_key!r} to our {what} {path!r}, which our model does not have "
                              f"(it has {sorted(our_shapes)})")  # fmt: skip
        if path in out:
            raise ParityError(f"{pmap.reference}: our {what} {path!r} is mapped twice")
        array = np.asarray(reference[ref_key])
        if transform == "T":
            if array.ndim != 2:
                raise ParityError(f"{pmap.reference}: {ref_key!r} is {array.ndim}-d; transform 'T' needs a matrix")
            array = array.T
        if tuple(array.shape) != tuple(our_shapes[path]):
            raise ParityError(f"{pmap.reference}: reference {ref_key!r} has shape {tuple(np.shape(reference[ref_key]))}"
                              f"{' (transposed ' + str(array.shape) + ')' if transform else ''}, our {path!r} has {tuple(our_shapes[path])}")  # fmt: skip
        out[path] = array
    unmapped_ours = sorted(set(our_shapes) - set(out))
    if unmapped_ours:
        raise ParityError(f"{pmap.reference}: our {what}(s) {unmapped_ours} get no reference tensor (add them to the map)")
    known = {k for k, _, _ in entries} | set(pmap.ignore) | set(pmap.constants)
    extra = sorted(set(reference) - known)
    if extra:
        raise ParityError(f"{pmap.reference}: reference {what}(s) {extra} are neither mapped nor ignored (add them to the map)")
    return out


def invert_map(pmap: ParityMap, ours: dict) -> dict:
    """Our tensors (by our path) -> reference keys, the inverse of :func:`apply_map` (stand-in exports, tests)."""
    import numpy as np

    out = {}
    for ref_key, path, transform in pmap.param_entries():
        if path not in ours:
            raise ParityError(f"{pmap.reference}: our {path!r} is missing")
        array = np.asarray(ours[path])
        out[ref_key] = array.T if transform == "T" else array
    return out


def relative_difference(ours, reference, floor: float = 0.0) -> float:
    """``max|ours - reference| / max(max|reference|, floor)`` (absolute when both are 0); inf on a shape mismatch or a non-finite value."""
    import numpy as np

    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    scale = max(float(np.max(np.abs(b))), floor)
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff


#: A tensor is compared against at least this share of the largest tensor of its set
#: (:func:`compare_tensors`): a gradient that is zero in exact arithmetic (FREEDOM's
#: projection biases, which cancel in ``u . (f+ - f-)``) is 0.0 on one side and float64
#: rounding noise (~1e-22) on the other, which a per-tensor relative difference calls 100%;
#: Adam turns such noise into displacements of ``lr * g / eps`` (~1e-16, against ~6e-3 for
#: the other tensors), hence a floor of 1e-8 rather than nearer float64's 1e-16.
NOISE_FLOOR = 1e-8
#: The same floor for the DISPLACEMENTS after N steps. Adam divides a gradient that is rounding
#: noise ``g`` by ``|g| + eps`` (eps 1e-8): MMGCF's projection biases (zero gradient in exact
#: arithmetic, ~1e-19 in the reference) move by ~5e-14, 1e-11 of the largest displacement, ours
#: by 0.0, which NOISE_FLOOR alone calls 7.7e-4. A parameter with a real gradient moves by ~lr per
#: step whatever the gradient's size, so a tensor that moved less than 1e-6 of the largest did not
#: move on either side.
DISPLACEMENT_NOISE_FLOOR = 1e-6


def compare_tensors(ours: dict, reference: dict, base: dict | None = None) -> dict:
    """Per-tensor relative differences; with ``base``, of the displacements ``x - base[x]``.

    Returns:
      ``{"max": worst difference, "worst": its name, "each": {name: difference}}``; a name
      on one side only counts as inf.
    """
    import numpy as np

    each, pairs = {}, {}
    for name in sorted(set(ours) | set(reference)):
        if name not in ours or name not in reference:
            each[name] = float("inf")
            continue
        a, b = np.asarray(ours[name], np.float64), np.asarray(reference[name], np.float64)
        if base is not None:
            a, b = a - base[name], b - base[name]
        pairs[name] = (a, b)
    # Each tensor against max(its own scale, NOISE_FLOOR x the largest reference tensor of the set).
    largest = max((float(np.max(np.abs(b))) for _, b in pairs.values() if b.size and np.all(np.isfinite(b))), default=0.0)
    for name, (a, b) in pairs.items():
        each[name] = relative_difference(a, b, (NOISE_FLOOR if base is None else DISPLACEMENT_NOISE_FLOOR) * largest)
    worst = max(each, key=lambda n: each[n]) if each else ""
    return {"max": each[worst] if each else 0.0, "worst": worst, "each": each}


# ---------------------------------------------------------------------------------------
# The data folder both sides read.
# ---------------------------------------------------------------------------------------


def write_data_folder(root: str) -> str:
    """Writes a small synthetic dataset as ``root/baby/`` in the MMRec format (the reference reads it under its "baby" config).

    With the user-user graph (``user_graph.npz`` for us, the pickled ``user_graph_dict.npy``
    for the reference's DualGNN / DRAGON), as ``vs_reference.write_data_folder`` writes it.
    """
    import dataclasses

    import numpy as np

    from mirrorgrad_jax.data import write_mmrec
    from mirrorgrad_jax.data.synthetic import make_synthetic
    from mirrorgrad_jax.graph import build_user_graph

    dataset = make_synthetic(**DATASET, name="baby")
    user_graph = build_user_graph(dataset.train, dataset.num_users)
    dataset = dataclasses.replace(dataset, user_graph=user_graph)
    folder = os.path.join(root, "baby")
    write_mmrec(dataset, folder)
    reference_format = {int(u): [ids.tolist(), weights.tolist()] for u, (ids, weights) in user_graph.items()}
    np.save(os.path.join(folder, "user_graph_dict.npy"), np.array(reference_format, dtype=object), allow_pickle=True)
    return folder


# ---------------------------------------------------------------------------------------
# The reference's process: build, export.
# ---------------------------------------------------------------------------------------


def _to_float64(module, torch) -> int:
    """Casts the float tensors a reference model holds as plain attributes (features, graphs) to float64; returns how many."""
    count = 0

    def cast(value):
        nonlocal count
        if torch.is_tensor(value) and not isinstance(value, torch.nn.Parameter) and value.is_floating_point() and value.dtype != torch.float64:
            count += 1
            return value.double()
        if isinstance(value, list):
            return [cast(v) for v in value]
        if isinstance(value, tuple):
            return tuple(cast(v) for v in value)
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    for sub in module.modules():
        for name, value in list(vars(sub).items()):
            if name.startswith("_"):
                continue
            new = cast(value)
            if new is not value:
                object.__setattr__(sub, name, new)
    module.double()
    return count


def reference_export(reference: str, data_root: str, model: str, steps: int, batch_size: int, users: int, out: str, threads: int) -> None:
    """In the reference's Python: builds the model with the reference's own code and writes the exchange file."""
    from vs_reference import install_cpu_cuda_shim, install_reference_shims

    shims = install_reference_shims()
    import numpy as np
    import torch

    shims += install_cpu_cuda_shim(torch)
    torch.set_num_threads(threads)
    pmap = PARITY_MAPS[model]
    os.chdir(os.path.join(reference, "src"))  # the reference reads ./configs/ relative to the working directory
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    overrides = {
        "gpu_id": 0,
        "data_path": data_root.rstrip("/") + "/",
        "epochs": 1,
        "stopping_step": 10**6,
        "seed": SEED,
        "train_batch_size": batch_size,
        **pmap.settings,
        **pmap.reference_settings,
        **MG_SETTINGS,
    }
    config = Config(pmap.reference, "baby", dict(overrides), True)
    for key, value in overrides.items():  # scalars, not the yaml grids
        config[key] = value
    dataset = RecDataset(config)
    train_ds, _valid, _test = dataset.split()
    for part in (dataset, train_ds):
        str(part)  # quick_start logs these; __str__ sets the inter_num the loaders read
    train_data = TrainDataLoader(config, train_ds, batch_size=config["train_batch_size"], shuffle=True)
    torch.set_default_dtype(torch.float64)
    hook = globals_hook(pmap.reference_hook)
    cast_counts = []

    def build():
        init_seed(SEED)
        train_data.pretrain_setup()
        torch.set_default_dtype(getattr(torch, pmap.reference_build_dtype))
        try:
            net = get_model(pmap.reference)(config, train_data).to(config["device"])
        finally:
            torch.set_default_dtype(torch.float64)
        cast_counts.append(_to_float64(net, torch))
        if hook:
            hook(net, torch)
        net.pre_epoch_processing()
        return net

    net = build()
    initial = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    constants = {}
    for key in pmap.constants:
        if key.startswith("attr:"):
            value = net
            for part in key[len("attr:"):].split("."):
                value = getattr(value, part)
            constants[key] = value.detach().cpu().numpy()
    batches = []
    for batch in train_data:  # its own shuffle and negative sampling, epoch 0
        batches.append(batch.clone())
        if len(batches) == steps:
            break
    steps_per_epoch = len(train_data)

    # Step 0: loss, the loss modules' outputs, gradients, scores.
    recorded = []

    def recorder(name):
        return lambda _mod, _inp, output: recorded.append((name, output))

    handles = [sub.register_forward_hook(recorder(type(sub).__name__)) for sub in net.modules() if type(sub).__name__.endswith("Loss") and sub is not net]
    net.train()
    net.zero_grad()
    losses = net.calculate_loss(batches[0].clone())
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    for handle in handles:
        handle.remove()
    terms = {f"{i}_{name}": np.asarray(float(value.detach())) for i, (name, value) in enumerate(recorded) if torch.is_tensor(value) and value.numel() == 1}
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy() for name, p in net.named_parameters()}
    no_grad = [name for name, p in net.named_parameters() if p.grad is None]
    score_users = torch.arange(min(users, net.n_users), device=config["device"])
    net.eval()
    with torch.no_grad():
        scores = net.full_sort_predict([score_users]).detach().cpu().numpy()

    # N steps through the reference trainer's own _train_epoch, MG off and on.
    if pmap.zero_grad == "zeros":  # as torch 1.13 (the reference's pinned environment): zeros, not None
        torch_zero_grad = torch.optim.Optimizer.zero_grad

        def zero_grad_writing_zeros(optimizer, set_to_none: bool = True) -> None:
            torch_zero_grad(optimizer, set_to_none=False)

        torch.optim.Optimizer.zero_grad = zero_grad_writing_zeros  # this child process exports one model only
    finals, step_losses = {}, {}
    for mg in (False, True):
        net = build()
        net.load_state_dict(initial)
        trainer = get_trainer()(config, net, mg)
        _total, per_batch = trainer._train_epoch([b.clone() for b in batches], 0)
        finals[mg] = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        step_losses["mg" if mg else "plain"] = np.asarray([float(x) for x in per_batch])

    meta = {
        "model": model,
        "reference": pmap.reference,
        "torch": torch.__version__,
        # What the reference's optimizer.zero_grad() did: None gradients from torch 2.0, or zeros.
        "zero_grad": "zeros" if pmap.zero_grad == "zeros" or int(torch.__version__.split(".")[0]) < 2 else "none",
        "shims": shims,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "steps": len(batches),
        "learning_rate": float(config["learning_rate"]),
        "learner": str(config["learner"]).lower(),
        # The reference evaluates a string weight_decay; a number literal is all its configs hold, read without eval.
        "weight_decay": float(ast.literal_eval(config["weight_decay"]) if isinstance(config["weight_decay"], str) else (config["weight_decay"] or 0.0)),
        "clip_grad_norm": config["clip_grad_norm"],
        "mg": MG_SETTINGS,
        "dtype": str(next(net.parameters()).dtype),
        "cast_to_float64": cast_counts[0],
        "no_grad": no_grad,
        "n_users": int(net.n_users),
        "n_items": int(net.n_items),
    }
    write_exchange(
        out,
        {
            "init": {**{k: v.numpy() for k, v in initial.items()}, **constants},
            "batch": {str(i): b.cpu().numpy() for i, b in enumerate(batches)},
            "step0": {"loss": np.asarray(float(loss.detach())), "score_users": score_users.cpu().numpy()},
            "terms": terms,
            "grad": grads,
            "scores": {"block": scores},
            "final_plain": finals[False],
            "final_mg": finals[True],
            "losses": step_losses,
        },
        meta,
    )


def globals_hook(name: str | None):
    """The hook function ``name`` of ``parity_maps`` (None for none)."""
    if not name:
        return None
    import parity_maps

    hook = getattr(parity_maps, name, None)
    if not callable(hook):
        raise ParityError(f"parity_maps has no hook function {name!r}")
    return hook


# ---------------------------------------------------------------------------------------
# This project's side.
# ---------------------------------------------------------------------------------------


def _flat(state) -> dict:
    """``{dotted path: array}`` of an nnx State."""
    from flax import nnx

    return {".".join(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(state)}


def _replace(state, values: dict):
    """``state`` with the leaves named in ``values`` replaced."""
    import jax.numpy as jnp
    from flax import nnx

    filled = []
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(p) for p in path)
        filled.append((path, var.replace(jnp.asarray(values[name])) if name in values else var))
    return nnx.from_flat_state(filled)


def our_param_shapes(model) -> dict:
    from flax import nnx

    return {name: tuple(value.shape) for name, value in _flat(nnx.state(model, nnx.Param)).items()}


def build_ours(name: str, pmap: ParityMap, dataset, init: dict, *, float64: bool = True, overrides: dict | None = None):
    """Our model on ``dataset`` with the reference's initial weights (and exported constants) loaded through the map.

    ``overrides``: config fields set on top of the map's settings (the term check zeroes weights).
    """
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from mirrorgrad_jax.models import build_config, get_model

    cls = get_model(pmap.model or name)
    model = cls(dataset, build_config(cls, {**pmap.settings, **pmap.ours, **(overrides or {})}), rngs=nnx.Rngs(params=SEED))
    if float64:  # constants built in float32 (features, graph values) in float64, as the reference after its cast
        others = nnx.state(model, nnx.Not(nnx.Param))
        wide = {k: np.asarray(v, np.float64) for k, v in _flat(others).items() if getattr(v, "dtype", None) == jnp.float32}
        nnx.update(model, _replace(others, wide))
    hook = globals_hook(pmap.ours_hook)
    if hook:
        hook(model)
    model.pre_epoch(np.random.default_rng(SEED))
    dtype = np.float64 if float64 else np.float32
    params = apply_map(pmap, {k: v for k, v in init.items() if k not in pmap.constants}, our_param_shapes(model))
    nnx.update(model, _replace(nnx.state(model, nnx.Param), {k: np.asarray(v, dtype) for k, v in params.items()}))
    if pmap.constants:
        others = nnx.state(model, nnx.Not(nnx.Param))
        have = _flat(others)
        taken = {}
        for ref_key, path in pmap.constants.items():
            if path not in have:
                raise ParityError(f"{pmap.reference}: constants[{ref_key!r}] names our {path!r}, which our model does not hold")
            if tuple(np.shape(init[ref_key])) != tuple(np.shape(have[path])):
                raise ParityError(f"{pmap.reference}: constant {ref_key!r} has shape {np.shape(init[ref_key])}, our {path!r} {np.shape(have[path])}")
            dtype = np.asarray(have[path]).dtype
            # A float constant keeps float64 (pre_epoch above may have drawn it in float32).
            taken[path] = np.asarray(init[ref_key], np.float64 if float64 and dtype.kind == "f" else dtype)
        nnx.update(model, _replace(others, taken))
    return model


def ours_results(name: str, pmap: ParityMap, dataset, sections: dict, meta: dict, *, float64: bool = True, trajectory: bool = True, dispatch: str = "scan",
    arms: tuple[str, ...] = ("plain", "mg"),
) -> dict:
    """Our loss, terms, gradients and scores at step 0 and (``trajectory``) parameters after the steps, MG off and on (our names).

    ``dispatch``: the trainer's (``TrainConfig.dispatch``): ``"scan"`` (its default, what a
    run uses) or ``"per_batch"`` (one jitted step per batch; compiles faster).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from mirrorgrad_jax.models import TrainingCache

    from mirrorgrad_jax.train import (
        EpochEngine,
        MGConfig,
        TrainConfig,
        build_optimizer,
        set_learning_rate,
    )
    from mirrorgrad_jax.train.optimizer import first_batch_labels

    init = sections["init"]
    batches = [np.asarray(sections["batch"][str(i)], np.int32) for i in range(len(sections["batch"]))]
    model = build_ours(name, pmap, dataset, init, float64=float64)
    graphdef, params, cache, consts = nnx.split(model, nnx.Param, TrainingCache, ...)
    key = jax.random.key(SEED)

    def loss_fn(p, c, batch):
        merged = nnx.merge(graphdef, p, c, consts, copy=True)
        # Step 0 is the first batch of an epoch (the reference's first calculate_loss after
        # pre_epoch_processing): LATTICE rebuilds its item graph there; ``loss`` for the others.
        return merged.first_batch_loss(batch, key), nnx.state(merged, TrainingCache)

    # Jitted: op-by-op dispatch compiles every primitive on first use, slower on a CPU than one program.
    (loss, cache_after), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, cache, jnp.asarray(batches[0][:3]))
    users = jnp.asarray(sections["step0"]["score_users"], jnp.int32)
    scores = jax.jit(lambda p, c, u: nnx.merge(graphdef, p, c, consts, copy=True).scores(u))(params, cache_after, users)
    out = {"loss": float(loss), "grad": {k: np.asarray(v) for k, v in _flat(grads).items()}, "scores": np.asarray(scores)}
    out["terms"] = our_terms(name, pmap, dataset, init, jnp.asarray(batches[0][:3]), key, float64=float64)
    if not trajectory:
        return out

    steps_per_epoch = int(meta["steps_per_epoch"])
    train_config = TrainConfig(
        learning_rate=meta["learning_rate"],
        optimizer=meta["learner"],
        weight_decay=meta["weight_decay"],
        clip_grad_norm=meta.get("clip_grad_norm"),
        batch_size=batches[0].shape[1],
        seed=SEED,
        dispatch=dispatch,
        # What optimizer.zero_grad() does in the reference's torch: None from 2.0 (Adam skips a
        # first-batch model's graph learner on the other batches), zeros in 1.13 (and without a torch version).
        zero_grad=meta.get("zero_grad") or (
            "none" if str(meta.get("torch", "0")).split(".")[0].isdigit() and int(str(meta.get("torch", "0")).split(".")[0]) >= 2 else "zeros"
        ),
    )
    sizes = {b.shape[1] for b in batches[:-1]}
    if len(sizes) > 1:
        raise ParityError(f"the exported batches have sizes {sorted(sizes)} before the last one")
    same = batches[-1].shape[1] == batches[0].shape[1]
    full = np.stack([b[:3] for b in (batches if same else batches[:-1])]) if (same or len(batches) > 1) else None
    last = None if same else batches[-1][:3]
    for arm in arms:
        enabled = arm == "mg"
        fresh = build_ours(name, pmap, dataset, init, float64=float64)
        mg = MGConfig(enabled=enabled, **meta.get("mg", MG_SETTINGS))
        # As train() builds them (train/loop.py): a first-batch model's learner in its own, skippable group.
        skippable = bool(type(fresh).first_batch_params) and train_config.zero_grad == "none"
        labels = first_batch_labels(type(fresh), nnx.state(fresh, nnx.Param)) if skippable else None
        tx = build_optimizer(train_config, mg, steps_per_epoch, first_batch_labels=labels)
        engine = EpochEngine(fresh, tx, mg, train_config, skippable=skippable)
        opt_state = set_learning_rate(engine.init_opt_state(tx), train_config.learning_rate_at(0))
        p, _s, losses = engine.run_epoch(engine.params, opt_state, full, last, jax.random.fold_in(key, 0), 0, steps_per_epoch)
        out[f"final_{arm}"] = {k: np.asarray(v) for k, v in _flat(p).items()}
        out[f"losses_{arm}"] = np.asarray(losses)[:, 1]  # the last pass of each batch, as the reference's per-batch list
    return out


def our_terms(name: str, pmap: ParityMap, dataset, init: dict, batch, key, *, float64: bool = True) -> dict:
    """Our loss terms named as the reference's (``pmap.terms``), read off our loss with weights set to 0."""
    from flax import nnx

    if not pmap.terms:
        return {}
    settings = {**pmap.settings, **pmap.ours}
    weights = {ref: field for ref, field in pmap.terms.items() if field}
    missing = sorted({f for f in weights.values() if f not in settings})
    if missing:
        raise ParityError(f"{pmap.reference}: terms weighted by {missing}, which the map's settings do not set")
    zero = {field: 0.0 for field in weights.values()}

    def loss_with(over):
        return float(nnx.jit(lambda m, b: m.first_batch_loss(b, key))(build_ours(name, pmap, dataset, init, float64=float64, overrides=over), batch))

    base = loss_with(zero)
    out = {}
    for ref, field in pmap.terms.items():
        if not field:
            out[ref] = base
        else:
            weight = float(settings[field])
            if weight == 0:
                raise ParityError(f"{pmap.reference}: term {ref!r} is weighted by {field} = 0 in the map's settings; it cannot be read off")
            out[ref] = (loss_with({**zero, field: weight}) - base) / weight
    return out


def _transformed_scores(pmap: ParityMap, scores):
    """Our scores as the reference's ``full_sort_predict`` reports them (``pmap.score_transform``)."""
    import numpy as np

    if pmap.score_transform == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    if pmap.score_transform:
        raise ParityError(f"{pmap.reference}: unknown score_transform {pmap.score_transform!r} (known: '', 'sigmoid')")
    return scores


def compare(name: str, pmap: ParityMap, sections: dict, meta: dict, ours: dict) -> dict:
    """One model's row: the differences of every compared quantity, the worst tensor of each, the verdict."""
    import numpy as np

    shapes = {k: np.shape(v) for k, v in ours["grad"].items()}
    init = apply_map(pmap, {k: v for k, v in sections["init"].items() if k not in pmap.constants}, shapes)
    grads = compare_tensors(ours["grad"], apply_map(pmap, sections["grad"], shapes, "gradient"))
    row = {
        "model": name,
        "reference": f"{pmap.reference} ({'MMRec' if pmap.source == 'mmrec' else 'Mirror-Gradient'})",
        "loss": relative_difference(ours["loss"], sections["step0"]["loss"]),
        "loss_values": [float(ours["loss"]), float(sections["step0"]["loss"])],
        "grad": grads["max"],
        "grad_worst": grads["worst"],
        "scores": relative_difference(_transformed_scores(pmap, ours["scores"]), sections["scores"]["block"]),
        "terms_reference": {k: float(v) for k, v in sections["terms"].items()},
        "terms_compared": sorted(ours.get("terms", {})),
        "terms": compare_tensors(ours.get("terms", {}), {k: sections["terms"][k] for k in ours.get("terms", {}) if k in sections["terms"]})["max"]
        if ours.get("terms") else 0.0,
        "steps": int(meta["steps"]),
        "deterministic": pmap.deterministic,
        "no_grad": meta.get("no_grad", []),
    }
    for arm in ("plain", "mg"):
        final = compare_tensors(ours[f"final_{arm}"], apply_map(pmap, sections[f"final_{arm}"], shapes, f"parameter after {arm} steps"), init)
        row[f"final_{arm}"] = final["max"]
        row[f"final_{arm}_worst"] = final["worst"]
        row[f"losses_{arm}"] = relative_difference(ours[f"losses_{arm}"], sections["losses"][arm])
    row["pass"] = bool(
        max(row["loss"], row["terms"], row["grad"], row["scores"]) <= STEP_TOLERANCE
        and max(row["final_plain"], row["final_mg"], row["losses_plain"], row["losses_mg"]) <= TRAJECTORY_TOLERANCE
    )
    return row


# ---------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------

COLUMNS = (
    "model", "reference", "terms compared (max rel. diff.)", "loss", "gradients (worst)", "scores",
    "after N steps plain (worst)", "after N steps MG (worst)", "made deterministic", "verdict",
)  # fmt: skip


def _g(x: float) -> str:
    return f"{x:.1e}" if x != float("inf") else "inf"


def render_row(row: dict) -> tuple:
    if row.get("error"):
        return (row["model"], row.get("reference", ""), "-", "-", "-", "-", "-", "-", "-", f"NOT RUN: {row['error']}")
    verdict = "PASS" if row["pass"] else "FAIL"
    compared = row.get("terms_compared") or []
    terms = "total" + (f"; {', '.join(compared)}: {_g(row['terms'])}" if compared else "")
    unmatched = [t for t in row.get("terms_reference", {}) if t not in compared]
    terms += f" (recorded, not compared: {', '.join(unmatched)})" if unmatched else ""
    return (
        row["model"], row["reference"], terms, _g(row["loss"]), f"{_g(row['grad'])} ({row['grad_worst']})", _g(row["scores"]),
        f"{_g(max(row['final_plain'], row['losses_plain']))} ({row['final_plain_worst']})",
        f"{_g(max(row['final_mg'], row['losses_mg']))} ({row['final_mg_worst']})",
        row["deterministic"], verdict,
    )  # fmt: skip


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        *report_header(meta["command"], date=meta["date"], machine=meta["machine"]),
        f"Reference: {meta['reference']}  ",
        f"This project: {meta['ours']}  ",
        f"Data: {meta['data']}",
        "",
        (f"Relative differences, this project against the reference, tensor by tensor ``max|ours - ref| / max|ref|`` (worst tensor named). "
        f"Step 0 (loss, every gradient, full-ranking scores of a block of users) on the reference's first batch; tolerance {STEP_TOLERANCE:g}. "
        f"After N steps (Adam, the reference's settings, MG {json.dumps(MG_SETTINGS)} on and off, on the reference's own batches): the "
        f"difference of the DISPLACEMENT from the common initial weights, and of the per-step losses; tolerance {TRAJECTORY_TOLERANCE:g}. "
        f"A tensor's scale is at least {NOISE_FLOOR:g} (gradients) or {DISPLACEMENT_NOISE_FLOOR:g} (displacements) of the largest "
        "tensor of the model: a gradient that is zero in exact arithmetic is 0 on one side and rounding noise on the other."),
        "",
        *markdown_table(COLUMNS, [render_row(r) for r in rows]),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"parity.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _checkout(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(os.path.join(path, "src", "common", "trainer.py")):
        _fail(f"{flag} {path} is not a reference checkout (no src/common/trainer.py)")
    return os.path.abspath(path)


def run_model(model: str, args, data_root: str, work: str) -> dict:
    """Exports the reference's side in its process, computes ours here, compares."""
    pmap = PARITY_MAPS[model]
    checkout = args.mmrec if pmap.source == "mmrec" else args.reference
    exchange = os.path.join(work, f"{model}.npz")
    # The model's own copy of the data folder: the reference caches graphs there under names
    # several models share (MGCN's and SMORE's image_adj_<k>_True.pt, FREEDOM's and PGL's
    # mm_adj_freedomdsp_<k>_<w>.pt), which must not feed another model.
    own_root = os.path.join(work, f"data_{model}")
    shutil.copytree(os.path.join(data_root, "baby"), os.path.join(own_root, "baby"), dirs_exist_ok=True)
    data_root = own_root
    if pmap.data_hook:
        globals_hook(pmap.data_hook)(os.path.join(data_root, "baby"))
    src = os.path.join(checkout, "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.path.dirname(os.path.abspath(__file__))]), "OMP_NUM_THREADS": str(args.threads)}
    argv = [args.ref_python, os.path.abspath(__file__), "--_export", model, "--_data", data_root, "--_out", exchange,
            "--reference", checkout, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"the reference's export failed:\n{done.stderr[-3000:]}")
    sections, meta = read_exchange(exchange)
    from mirrorgrad_jax.data import load_mmrec

    dataset = load_mmrec(os.path.join(data_root, "baby"), verbose=False)
    ours = ours_results(model, pmap, dataset, sections, meta)
    row = compare(model, pmap, sections, meta, ours)
    row["torch"], row["shims"] = meta["torch"], meta["shims"]
    if args.keep:
        shutil.copy(exchange, os.path.join(args.keep, f"{model}.npz"))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="checkout of Qrange-group/Mirror-Gradient (holds src/common/trainer.py)")
    parser.add_argument("--mmrec", help="checkout of enoche/MMRec, for the models only MMRec has (BPR, LightGCN, ...)")
    parser.add_argument("--ref-python", default=os.environ.get("MG_REF_PYTHON", sys.executable),
                        help="Python with torch, numpy, scipy, pandas, pyyaml for the reference (default $MG_REF_PYTHON, else this one)")  # fmt: skip
    parser.add_argument("--models", default=",".join(PARITY_MAPS))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the trajectory check (default 6: two MG blocks)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="append the markdown report here")
    parser.add_argument("--jsonl", help="append each model's row here")
    parser.add_argument("--keep", help="copy each model's exchange file into this folder")
    parser.add_argument("--list-params", metavar="MODEL", help="print our parameter paths and shapes of MODEL on the parity data, and exit")
    parser.add_argument("--_export", help=argparse.SUPPRESS)
    parser.add_argument("--_data", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._export:
        reference_export(os.path.abspath(args.reference), args._data, args._export, args.steps, args.batch_size, 64, args._out, args.threads)
        return
    if args.list_params:
        from flax import nnx
        from mirrorgrad_jax.models import build_config, get_model

        from mirrorgrad_jax.data.synthetic import make_synthetic

        try:
            cls = get_model(args.list_params)
        except Exception as err:  # noqa: BLE001 (the registry's message names the known models)
            _fail(str(err).splitlines()[0])
        pmap = PARITY_MAPS.get(args.list_params)
        settings = {**pmap.settings, **pmap.ours} if pmap else {}
        model = cls(make_synthetic(**DATASET), build_config(cls, settings), rngs=nnx.Rngs(params=0))
        for path, shape in our_param_shapes(model).items():
            print(f"{path}\t{shape}")
        return
    if not args.reference:
        _fail("--reference is required (a checkout of Qrange-group/Mirror-Gradient)")
    args.reference = _checkout(args.reference, "--reference")
    args.mmrec = _checkout(args.mmrec, "--mmrec")
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in PARITY_MAPS]
    if unknown:
        _fail(f"--models: no parity map for {', '.join(unknown)} (maps: {', '.join(PARITY_MAPS)})")
    needs_mmrec = [m for m in models if PARITY_MAPS[m].source == "mmrec"]
    if needs_mmrec and not args.mmrec:
        _fail(f"--mmrec (an MMRec checkout) is required for {', '.join(needs_mmrec)}")
    if args.steps < 1 or args.batch_size < 1 or args.threads < 1:
        _fail("--steps, --batch-size and --threads must be >= 1")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    probe = subprocess.run([args.ref_python, "-c", "import torch, numpy, scipy, pandas, yaml"], capture_output=True, text=True, check=False)
    if probe.returncode:
        _fail(f"{args.ref_python} cannot import the reference's dependencies ({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'exit ' + str(probe.returncode)})")

    import jax

    jax.config.update("jax_enable_x64", True)
    from importlib.metadata import version

    from vs_reference import _git_head

    started = datetime.datetime.now()
    work = tempfile.mkdtemp(prefix="parity_")
    rows = []
    try:
        write_data_folder(work)
        for model in models:
            print(f"[{model}] ...", file=sys.stderr, flush=True)
            try:
                row = run_model(model, args, work, work)
            except Exception as err:  # noqa: BLE001 (one model's failure does not lose the others)
                print(f"[{model}] failed: {err}", file=sys.stderr, flush=True)
                row = {"model": model, "reference": PARITY_MAPS[model].reference, "error": str(err).strip().splitlines()[-1][:300]}
            else:
                print(f"[{model}] {'PASS' if row['pass'] else 'FAIL'}: {json.dumps(render_row(row))}", file=sys.stderr, flush=True)
            rows.append(row)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps({**row, "date": f"{started:%Y-%m-%d %H:%M}"}) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    measured = [r for r in rows if not r.get("error")]
    checkouts = [f"Qrange-group/Mirror-Gradient @ {_git_head(args.reference)}"] + ([f"enoche/MMRec @ {_git_head(args.mmrec)}"] if args.mmrec else [])
    meta = {
        "command": command_as_run("parity.py", argv if argv is not None else sys.argv[1:]),
        "date": f"{started:%Y-%m-%d %H:%M}, {(datetime.datetime.now() - started).total_seconds() / 60:.0f} min",
        "machine": describe_machine(device=str(jax.devices()[0])),
        "reference": ", ".join(checkouts) + (f"; torch {measured[0]['torch']} (CPU, float64); shims: {', '.join(measured[0]['shims'])}" if measured else ""),
        "ours": f"flax {version('flax')}, optax {version('optax')}, jax_enable_x64 (float64); optimizer and steps: build_optimizer + EpochEngine.run_epoch",
        "data": (f"synthetic {json.dumps(DATASET)} written as one MMRec folder read by both; batch size {args.batch_size}, "
                 f"N = {args.steps} steps (the reference's first {args.steps} batches of epoch 0), seed {SEED}"),
    }
    text = render(rows, meta)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    if not measured:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
