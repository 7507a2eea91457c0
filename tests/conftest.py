"""Shared fixtures: tiny run configs written on the fly."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Keep every test single-threaded per process: CI has 2 cores and some tests start 2 ranks.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def repo_root() -> Path:
    return REPO
