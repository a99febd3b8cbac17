"""Fixtures of the reliability suite (the engine fixtures come from tests/engine_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rel_helpers import slideproc

# The engine fixtures (small_archive, tiny_model, reference_run) come from
# tests/conftest.py, shared with the rest of the suite.


@pytest.fixture(scope="session")
def fields(tmp_path_factory) -> Path:
    """One synthetic image-folder sample: two 512 px fields (~90 cells), no mpp in the files."""
    root = tmp_path_factory.mktemp("fields")
    proc = slideproc("synth", root, "--samples", "1", "--cells", "90", "--kind", "folder",
                     "--size", "512", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    folder = root / "folders" / "folder_000"
    assert len(list(folder.glob("*.png"))) == 2
    return folder
