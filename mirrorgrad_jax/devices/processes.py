"""Several processes (hosts) in one JAX run: joining them before any device is touched."""

from __future__ import annotations

import os

import jax

from mirrorgrad_jax.errors import ConfigError

__all__ = ["initialize_distributed"]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> bool:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Values left as ``None`` come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``. ``coordinator="auto"`` lets JAX detect the cluster (SLURM,
    Open MPI, Kubernetes...). Nothing given anywhere: a single process, nothing done.
    Must run before anything touches a device.

    Args:
      coordinator: ``host:port`` of process 0's coordinator service.
      num_processes: how many processes take part.
      process_id: this process's rank, ``0 .. num_processes - 1``.
      timeout_s: how long to wait for the other processes.

    Returns:
      True when this process is now part of a distributed run.

    Raises:
      ConfigError: an incomplete or inconsistent set of values.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _env_int("JAX_NUM_PROCESSES") if num_processes is None else num_processes
    process_id = _env_int("JAX_PROCESS_ID") if process_id is None else process_id
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if coordinator == "auto":
        try:
            jax.distributed.initialize(initialization_timeout=timeout_s)
        except ValueError as err:  # no cluster environment JAX recognises
            raise ConfigError(f"--coordinator auto found no cluster to join ({err}); give --coordinator host:port, --num-processes and --process-id") from None
        return True
    missing = [name for name, value in (("--coordinator", coordinator), ("--num-processes", num_processes), ("--process-id", process_id)) if value is None]
    if missing:
        raise ConfigError(f"a multi-process run needs --coordinator, --num-processes and --process-id (or JAX_* variables); missing {', '.join(missing)}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in 0..{num_processes - 1} and --num-processes >= 1, got {process_id} of {num_processes}")
    host, _, port = coordinator.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator must be host:port with a port in 1..65535, got {coordinator!r}")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id, initialization_timeout=timeout_s
    )
    return True
