"""Fixtures shared by the model tests (the builders themselves are in helpers.py)."""

from __future__ import annotations

import pytest
from helpers import hand_dataset, three_block_dataset


@pytest.fixture(scope="module")
def tiny():
    """60 users x 40 items, 576 train rows: three MG blocks of 64-row batches (helpers.three_block_dataset)."""
    return three_block_dataset()


@pytest.fixture(scope="module")
def hand():
    """3 users, 4 items, by hand (helpers.hand_dataset)."""
    return hand_dataset()
