"""Detection scoring: one-to-one matching in um, recall/precision/F1/count error, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slideproc.cli import main
from slideproc.detection_eval import box_hits, match_points, score, score_tables


def test_matching_is_one_to_one_and_closest_first():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    det = np.array([[1.0, 0.0], [0.5, 0.0], [30.0, 0.0]])
    m = match_points(truth, det, 4.0)
    assert m.tolist() == [[0, 1]]  # det 0 may not take truth 0 twice; truth 1 has none near
    s = score(truth, det, 4.0)
    assert (s.matched, s.recall, s.precision, s.count_error) == (1, 0.5, 1 / 3, 1)
    assert s.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_distance_limit_is_inclusive_and_in_um():
    assert len(match_points([[0, 0]], [[4.0, 0]], 4.0)) == 1
    assert len(match_points([[0, 0]], [[4.01, 0]], 4.0)) == 0


def test_box_hits_counts_false_hits_outside_white_cells_only():
    boxes = np.array([[0, 0, 10, 10], [8, 8, 14, 14], [20, 0, 28, 8], [30, 30, 33, 33], [40, 40, 48, 48]], float)
    classes = np.array(["WBC", "RBC", "RBC", "Platelet", "RBC"])
    # One detection in the WBC (and the red cell overlapping it), one on a lone
    # red cell, one on the platelet; the red cell at 40-48 holds none.
    pts = np.array([[9.0, 9.0], [24.0, 4.0], [30.0, 33.0]])
    assert box_hits(pts, boxes, classes) == {"WBC": (1, 1), "RBC": (1, 3), "Platelet": (1, 1)}
    # No detections: nothing hit; no boxes of a class: (0, 0).
    assert box_hits(np.zeros((0, 2)), boxes, classes) == {"WBC": (0, 1), "RBC": (0, 3), "Platelet": (0, 1)}
    assert box_hits(pts, boxes[:1], classes[:1])["RBC"] == (0, 0)


def test_empty_sets():
    assert score(np.zeros((0, 2)), np.zeros((0, 2))).recall == 1.0
    s = score(np.zeros((0, 2)), [[1.0, 1.0]])
    assert s.precision == 0.0 and s.count_error == 1
    s = score([[1.0, 1.0]], np.zeros((0, 2)))
    assert s.recall == 0.0 and s.f1 == 0.0


def test_score_tables_per_sample_and_source():
    truth = pd.DataFrame({"sample_id": ["a", "a", "b"], "source": ["f1", "f2", "g"],
                          "x": [100, 100, 50], "y": [100, 100, 50]})
    # Same coordinates in another file of the sample do not match.
    det = pd.DataFrame({"sample_id": ["a", "a", "b"], "source": ["f1", "f1", "g"],
                        "x": [104, 300, 58], "y": [100, 300, 50]})
    t = score_tables(truth, det, {"f1": 0.5, "f2": 0.5, "g": 0.25}, 4.0).set_index("sample_id")
    assert t.loc["a", "matched"] == 1 and t.loc["a", "n_true"] == 2 and t.loc["a", "n_detected"] == 2
    assert t.loc["b", "matched"] == 1 and t.loc["b", "mean_distance_um"] == pytest.approx(2.0)
    assert t.loc["overall", "recall"] == pytest.approx(2 / 3)


def test_cli_score_detection(tmp_path, capsys):
    (tmp_path / "out" / "cells").mkdir(parents=True)
    pd.DataFrame({"sample_id": ["s1"], "cell_id": [0], "source": ["s1.tiff"], "x": [10.0], "y": [10.0],
                  "x0": [0], "y0": [0], "x1": [20], "y1": [20], "area_um2": [50.0]}
                 ).to_csv(tmp_path / "out" / "cells" / "s1.csv", index=False)
    pd.DataFrame({"sample_id": ["s1", "s1"], "source": ["s1.tiff"] * 2, "x": [12.0, 200.0], "y": [10.0, 10.0],
                  "class": ["BLA", "LYT"]}).to_csv(tmp_path / "truth.csv", index=False)
    rc = main(["score-detection", str(tmp_path / "out"), str(tmp_path / "truth.csv"), "--mpp", "0.25",
               "--csv", str(tmp_path / "scores.csv")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "overall" in out and "recall" in out
    scores = pd.read_csv(tmp_path / "scores.csv").set_index("sample_id")
    assert scores.loc["overall", "recall"] == 0.5 and scores.loc["overall", "precision"] == 1.0


def test_cli_score_detection_errors_are_one_line(tmp_path, capsys):
    rc = main(["score-detection", str(tmp_path), str(tmp_path / "truth.csv")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truth" in err
