"""Fixtures shared by the model tests (the builders themselves are in helpers.py), and the
session's compilation cache.

Most of the suite's time is XLA compiling: each ``train()`` call builds its step, scan and
ranking programs afresh, so a test that trains twice (resume, a checkpoint evaluated after
its run, a seed repeated) compiles the same programs twice. JAX's persistent compilation
cache finds such a program by the fingerprint of its HLO and the compile options and loads
the executable instead of compiling it again: the same executable, so no number changes
(the pinned runs in test_pinned_runs.py check exactly that). The controller makes one
cache folder per session, which the xdist workers and the tests' subprocesses inherit
through JAX_COMPILATION_CACHE_DIR, and removes it at the end; a cache folder the caller
set already is used as it is and kept. Programs that compile in under 0.2 s are not
stored (measured: storing every program made the suite slower than no cache).

The suite also compiles with ``jax_disable_most_optimizations`` (LLVM's backend at -O0, its
expensive passes off), set through ``JAX_DISABLE_MOST_OPTIMIZATIONS`` so the workers and
subprocesses inherit it. The tests' programs are small and run for a few steps, so compiling
them is most of their cost. Measured 2026-12-07 on the 2-core machine, the whole suite in
place (``pytest -n auto --dist loadgroup``), one run each on a quiet machine: 765 s and
1,400 CPU-seconds with full optimization, 590 s and 1,048 with this (a few long-running
tests got slower, e.g. SelfCF's 17 s -> 22 s). The unoptimized code sums some float32
reductions in another order, so a number can move by about one ulp against an optimized
build: the pinned runs, recorded optimized, give their losses within 1.5e-7 relative (three
of seven cases move at all) and their metrics exactly, inside the tolerance those tests
state (1e-6). Every comparison inside the suite is between programs built the same way.
``JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test`` runs the optimized build.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from helpers import hand_dataset, three_block_dataset

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = "MIRRORGRAD_TEST_OWNS_JAX_CACHE"


def pytest_configure(config):
    if not os.environ.get(_CACHE_ENV):
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="mirrorgrad-test-xla-cache-")
        os.environ[_OWN_CACHE] = os.environ[_CACHE_ENV]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    import jax

    # JAX reads the variables when it is first imported; this covers a JAX imported earlier.
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
    jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true", "yes"))


def pytest_unconfigure(config):
    # Only the process that made the folder removes it (the controller, not a worker).
    own = os.environ.get(_OWN_CACHE)
    if own and not hasattr(config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny():
    """60 users x 40 items, 576 train rows: three MG blocks of 64-row batches (helpers.three_block_dataset)."""
    return three_block_dataset()


@pytest.fixture(scope="module")
def hand():
    """3 users, 4 items, by hand (helpers.hand_dataset)."""
    return hand_dataset()
