"""The device mesh: two named axes, ``data`` (batch rows, evaluated users) and ``model`` (table rows, items).

:func:`make_mesh` builds it from a spec written as people write it (``"data=2,model=2"``,
``"auto"``), checked against the devices there are; :func:`auto_budget_bytes` is the
per-table memory budget above which :class:`~mirrorgrad_jax.devices.Placement` splits a
table over the whole mesh.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
from jax.sharding import AxisType, Mesh

from mirrorgrad_jax.errors import ConfigError

__all__ = ["AXES", "DATA", "MODEL", "auto_budget_bytes", "describe_mesh", "make_mesh", "parse_mesh_spec"]

DATA = "data"
MODEL = "model"
AXES: tuple[str, str] = (DATA, MODEL)
#: Share of a device's memory one replicated table may take before the automatic budget
#: splits it: a trainable table costs about four copies (value, gradient, two Adam
#: moments), and the rest of the step needs room too.
AUTO_BUDGET_SHARE = 8


def parse_mesh_spec(spec: str | None, num_devices: int) -> dict[str, int]:
    """``"data=2,model=2"`` -> ``{"data": 2, "model": 2}``, checked against the devices there are.

    ``None``, ``""`` and ``"auto"`` put every device on ``data``. An axis left out gets
    what remains: ``"model=2"`` on 8 devices is ``data=4,model=2``; ``"data=2"`` is
    ``data=2,model=1``. A mesh may use fewer devices than there are (the first ones).

    Raises:
      ConfigError: an unknown axis, a size that is not a positive integer, a repeated
        axis, more devices than there are, or a ``model`` size that does not divide them.
    """
    if num_devices < 1:
        raise ConfigError(f"no devices to build a mesh on (got {num_devices})")
    text = "" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return {DATA: num_devices, MODEL: 1}
    sizes: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = (p.strip() for p in part.partition("="))
        if not sep or key not in AXES:
            raise ConfigError(f"mesh {spec!r}: expected axis=size pairs over {list(AXES)}, e.g. 'data=2,model=2' (or 'auto')")
        if key in sizes:
            raise ConfigError(f"mesh {spec!r}: axis {key!r} is given twice")
        try:
            size = int(value)
        except ValueError:
            raise ConfigError(f"mesh {spec!r}: the size of {key!r} must be a positive integer, got {value!r}") from None
        if size < 1:
            raise ConfigError(f"mesh {spec!r}: the size of {key!r} must be a positive integer, got {size}")
        sizes[key] = size
    if DATA not in sizes:
        if num_devices % sizes[MODEL]:
            raise ConfigError(f"mesh {spec!r}: model={sizes[MODEL]} does not divide the {num_devices} devices")
        sizes[DATA] = num_devices // sizes[MODEL]
    sizes.setdefault(MODEL, 1)
    needed = sizes[DATA] * sizes[MODEL]
    if needed > num_devices:
        raise ConfigError(f"mesh {spec!r} needs {needed} devices, but there are {num_devices} ({_device_words()})")
    return {DATA: sizes[DATA], MODEL: sizes[MODEL]}


def _device_words() -> str:
    devices = jax.devices()
    kind = f"{devices[0].platform}" if devices else "none"
    hint = "; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices" if kind == "cpu" else ""
    return f"{len(devices)} {kind} device(s) over {jax.process_count()} process(es){hint}"


def make_mesh(spec: str | None = "auto", devices: Sequence[Any] | None = None) -> Mesh:
    """The ``(data, model)`` mesh a spec describes (see :func:`parse_mesh_spec`).

    Both axes are ``AxisType.Auto``: XLA propagates shardings from the inputs, so code
    written for one device runs unchanged. With several processes the mesh must use every
    device of every process.

    Raises:
      ConfigError: a bad spec, or a multi-process mesh that leaves devices out.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    count = sizes[DATA] * sizes[MODEL]
    if jax.process_count() > 1 and count != len(devices):
        raise ConfigError(
            f"mesh {spec!r} uses {count} of the {len(devices)} devices; with {jax.process_count()} processes "
            "the mesh must use every device (e.g. --mesh auto)"
        )
    return jax.make_mesh((sizes[DATA], sizes[MODEL]), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:count])


def describe_mesh(mesh: Mesh) -> str:
    """``"data=2 x model=2 (4 cpu devices, 1 process)"``."""
    platform = mesh.devices.flat[0].platform
    processes = len({d.process_index for d in mesh.devices.flat})
    return (
        f"data={mesh.shape[DATA]} x model={mesh.shape[MODEL]} ({mesh.devices.size} {platform} device(s), "
        f"{processes} process{'es' if processes > 1 else ''})"
    )


def auto_budget_bytes(mesh: Mesh) -> int:
    """The default per-table budget: 1/:data:`AUTO_BUDGET_SHARE` of one device's memory.

    A device's memory is its ``memory_stats()["bytes_limit"]`` (GPUs, TPUs); simulated CPU
    devices share the host's RAM, so there it is the physical memory divided by the number
    of devices this process holds.
    """
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    device = local[0] if local else jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // AUTO_BUDGET_SHARE
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total) // max(1, len(local)) // AUTO_BUDGET_SHARE
