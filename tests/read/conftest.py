"""Synthetic sweeps with known seed noise (tests/read/ledgers.py), one per test module that asks."""

import pytest

from tests.read.ledgers import build


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return build(tmp_path_factory.mktemp("noisy"))


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    return build(tmp_path_factory.mktemp("one-seed"), seeds=1)
