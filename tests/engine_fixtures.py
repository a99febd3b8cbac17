"""Session fixtures for the engine tests: a small synthetic archive and a tiny model.

Both are made through the CLI, as a user would. The model is untrained beyond
one epoch on synthetic crops: these tests check the engine's mechanics
(layout, resume, failures, placement), not accuracy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from slideproc.cli import main


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    assert main(["-q", "synth", str(root), "--samples", "2", "--cells", "60", "--kind", "both",
                 "--size", "1536", "--seed", "11"]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    crops = root / "crops"
    assert main(["-q", "synth", str(crops), "--kind", "crops", "--cells", "84", "--seed", "3"]) == 0
    model = root / "model"
    from classify_fixtures import TINY_CONFIG  # eager steps: no minutes-long graph tracing

    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_CONFIG, encoding="utf-8")
    assert main(["-q", "train", str(crops / "crops"), "--out", str(model), "--config", str(cfg)]) == 0
    return model


def archive_inputs(archive: Path) -> list[str]:
    return [str(archive / "slides"), str(archive / "manifest.csv")]


def digest_outputs(out: Path) -> dict[str, str]:
    """sha256 of every CSV the run wrote (the files users read)."""
    files = sorted(out.glob("cells/*.csv")) + [out / "histograms.csv", out / "differential.csv"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def read_cells(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(out.glob("cells/*.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same samples, same cells (positions exact), same classes; confidences equal to float noise.

    Probabilities may differ in the last bits between processes with different
    thread counts (BLAS reduction order), so they are compared with a tolerance.
    """
    import numpy as np

    ha, hb = pd.read_csv(a / "histograms.csv"), pd.read_csv(b / "histograms.csv")
    pd.testing.assert_frame_equal(ha, hb)
    for f in sorted((a / "cells").glob("*.csv")):
        ca, cb = pd.read_csv(f), pd.read_csv(b / "cells" / f.name)
        pd.testing.assert_frame_equal(ca.drop(columns=["confidence"]), cb.drop(columns=["confidence"]))
        np.testing.assert_allclose(ca["confidence"], cb["confidence"], atol=1e-4)
    assert sorted(p.name for p in (a / "cells").glob("*.csv")) == sorted(p.name for p in (b / "cells").glob("*.csv"))


@pytest.fixture(scope="session")
def reference_run(small_archive, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model), "--out", str(out),
               "--workers", "2"])
    assert rc == 0
    return out
