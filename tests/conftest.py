"""Shared fixtures: paths to the real data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

# The engine's session fixtures (a synthetic archive, a tiny trained model, a
# reference run), declared here once for the whole suite: imported into each
# test module instead, pytest would build them once per module.
from engine_fixtures import reference_run, small_archive, tiny_model  # noqa: F401,E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (the ../shared folder beside the repository is absent)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return _need(REAL)


@pytest.fixture(scope="session")
def real_slides() -> Path:
    return _need(REAL / "slides")


@pytest.fixture(scope="session")
def matek_dir() -> Path:
    return _need(REAL / "matek_bm")


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    return _need(REAL / "bccd")


@pytest.fixture(scope="session")
def txl_dir() -> Path:
    return _need(REAL / "txl_pbc")


@pytest.fixture(scope="session")
def bm_he_dir() -> Path:
    return _need(REAL / "bm_he_miccai2015")


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """../shared/data/cases: input files users reported slide tools misreading (README.md there)."""
    return _need(SHARED / "data" / "cases")
