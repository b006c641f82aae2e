"""The parity check's per-model hooks (``benchmarks/parity_maps.py``) on our side, without torch.

These tests build each hooked model and check that what a hook feeds it (the reference's
exported samples, fixed dropout masks and noise tables, float64 constants) replaces our
own draws, so that ``benchmarks/parity.py`` compares like with like. They exercise
benchmark tooling that needs a reference checkout to matter, and together take minutes, so
they run on request: ``make test-parity`` (``MIRRORGRAD_PARITY_TESTS=1``). The parts every
model shares (the map covers our parameters and constants both ways; the harness itself)
are in ``tests/test_parity.py``, which ``make test`` runs.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmarks")
if BENCHMARKS not in sys.path:  # as when the scripts run: parity.py imports parity_maps / reporting beside it
    sys.path.append(BENCHMARKS)

OPTED_IN = os.environ.get("MIRRORGRAD_PARITY_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if OPTED_IN:
        return
    skip = pytest.mark.skip(reason="per-model parity hooks: run with make test-parity (MIRRORGRAD_PARITY_TESTS=1)")
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def parity_maps():
    """``benchmarks/parity_maps.py`` (the maps and hooks)."""
    import parity_maps

    return parity_maps


@pytest.fixture(scope="module")
def parity():
    """``benchmarks/parity.py`` (the harness)."""
    import parity

    return parity
