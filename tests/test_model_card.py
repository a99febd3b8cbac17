"""The model's validation record: written by train, carried into results.zarr by run, used by
report and evaluate for the adjusted differential; an old model directory still works."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify_fixtures import tiny_model, write_class_folders
from slideproc.cli import main
from slideproc.config import ReportConfig, RunConfig
from slideproc.differential import (COLUMNS, FLAG_MODEL_POOR, FLAG_NO_ERYTHROID, FLAG_NOT_ADJUSTED,
                                    FLAG_REVIEW)
from slideproc.model_card import (CARD_JSON, VALIDATION_CSV, ModelCard, effective_training_prior,
                                  load_stored_card, read_model_card, store_card)
from slideproc.report import write_report
from slideproc.store import zarr_store
from test_store import CLASSES, make_sample

NON_CELL = set(ReportConfig().non_cell_classes)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


# ----------------------------------------------------------------------------
# train writes the record
# ----------------------------------------------------------------------------
def test_train_writes_validation_predictions_priors_and_confusion(model_dir):
    card = json.loads((model_dir / CARD_JSON).read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    preds = pd.read_csv(model_dir / VALIDATION_CSV)
    assert preds.columns.tolist() == ["path", "true_class", "p_AAA", "p_BBB", "p_CCC"]
    assert len(preds) == metrics["n_val"] == card["n_val"]
    probs = preds[["p_AAA", "p_BBB", "p_CCC"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    split = pd.read_csv(model_dir / "split.csv")
    assert sorted(preds["path"]) == sorted(split.loc[split["subset"] == "val", "path"])
    # The record's figures are the calibrated validation figures of metrics.json.
    assert card["balanced_accuracy"] == pytest.approx(metrics["validation"]["balanced_accuracy"])
    assert card["confusion_matrix"]["matrix"] == metrics["validation"]["confusion_matrix"]["matrix"]
    m = np.array(card["confusion_matrix"]["matrix"])
    truth = preds["true_class"].map({"AAA": 0, "BBB": 1, "CCC": 2}).to_numpy()
    assert (m.sum(axis=1) == np.bincount(truth, minlength=3)).all()
    # Class weights n / (C n_c): the loss sees every class equally, whatever the counts.
    assert card["balance"] == "class_weight"
    assert list(card["training_prior"].values()) == pytest.approx([1 / 3] * 3)
    assert card["train_counts"] == metrics["train_counts"]
    assert "class weights" in card["training_prior_reasoning"]


def test_effective_training_prior_follows_the_balancing():
    counts = [100, 300, 600]
    assert effective_training_prior(counts, "none") == pytest.approx([0.1, 0.3, 0.6])
    assert effective_training_prior(counts, "sampling") == pytest.approx([1 / 3] * 3)
    assert effective_training_prior(counts, "class_weight") == pytest.approx([1 / 3] * 3)
    # Bounded weights (the rare class weighs 2 instead of 3.33): mix proportional to n_c * w_c.
    w = np.array([2.0, 1000 / 900, 1000 / 1800])
    expected = np.array(counts) * w / (np.array(counts) * w).sum()
    assert effective_training_prior(counts, "class_weight", w) == pytest.approx(expected)


# ----------------------------------------------------------------------------
# evaluate: differential.csv with true_percent
# ----------------------------------------------------------------------------
def test_evaluate_writes_the_differential_with_true_percent(model_dir, tmp_path):
    data = write_class_folders(tmp_path / "case-7", 6, seed=21, classes=["AAA", "BBB", "CCC"])
    # Uneven mix: 6 AAA, 6 BBB, 2 CCC.
    for p in sorted((data / "CCC").rglob("*.png"))[2:]:
        p.unlink()
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(model_dir), str(data), "--out", str(out), "--batch-size", "4"]) == 0
    df = pd.read_csv(out / "differential.csv")
    assert df.columns.tolist() == [*COLUMNS[:-1], "true_percent", "flags"]
    assert (df["sample_id"] == "case-7").all()
    rows = df.set_index("class")
    assert rows.loc[["AAA", "BBB", "CCC"], "true_percent"].tolist() == pytest.approx([600 / 14, 600 / 14, 200 / 14])
    assert rows.loc["nucleated_cells", "count"] == 14
    preds = pd.read_csv(out / "predictions.csv")
    assert rows.loc[["AAA", "BBB", "CCC"], "count"].tolist() == [
        int((preds["predicted_class"] == c).sum()) for c in ("AAA", "BBB", "CCC")]
    adjusted = rows.loc[["AAA", "BBB", "CCC"], "adjusted_percent"]
    assert adjusted.notna().all() and adjusted.sum() == pytest.approx(100.0)
    lo, hi = rows.loc[["AAA", "BBB", "CCC"], "adjusted_ci_low"], rows.loc[["AAA", "BBB", "CCC"], "adjusted_ci_high"]
    assert (lo <= hi).all() and (lo >= 0).all() and (hi <= 100).all()
    assert FLAG_NOT_ADJUSTED not in str(rows.loc["AAA", "flags"])


def old_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model as a model directory written before the validation record existed."""
    old = tmp_path / "old_model"
    shutil.copytree(model_dir, old)
    (old / VALIDATION_CSV).unlink()
    (old / CARD_JSON).unlink()
    return old


def test_an_old_model_dir_gives_the_raw_differential_and_says_why(model_dir, tmp_path):
    old = old_model_dir(model_dir, tmp_path)
    card = read_model_card(old)
    assert not card.usable and "trained before" in card.missing and VALIDATION_CSV in card.missing
    # Its metrics.json still tells how good it is.
    assert card.balanced_accuracy == pytest.approx(
        json.loads((old / "metrics.json").read_text())["validation"]["balanced_accuracy"])
    data = write_class_folders(tmp_path / "data", 3, seed=5)
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(old), str(data), "--out", str(out), "--batch-size", "4"]) == 0
    df = pd.read_csv(out / "differential.csv")
    assert df["adjusted_percent"].isna().all() and df["percent"].notna().any()
    assert df["flags"].str.contains(FLAG_NOT_ADJUSTED).all()


# ----------------------------------------------------------------------------
# report from results.zarr, with and without a stored record
# ----------------------------------------------------------------------------
def _validation_record(seed=0, per_class=12):
    """A 21-class validation record of a classifier that is right ~80 % of the time."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    alpha = np.full((len(y), len(CLASSES)), 0.2)
    alpha[np.arange(len(y)), y] = 6.0
    p = np.array([rng.dirichlet(a) for a in alpha])
    return y, p


def _card(balanced_accuracy=0.81, blast_recall=0.9) -> ModelCard:
    y, p = _validation_record()
    per_class = {c: {"recall": 0.8, "precision": 0.8, "support": 12} for c in CLASSES}
    per_class["BLA"]["recall"] = blast_recall
    return ModelCard(labels=tuple(CLASSES), y_val=y, p_val=p, model_dir="/models/marrow-v3",
                     info={"balanced_accuracy": balanced_accuracy, "per_class": per_class, "n_val": len(y)})


def _store(out: Path, samples: dict, card: ModelCard | None) -> Path:
    zarr_store.init_store(out, class_names=CLASSES, run_id="run-q", model_sha256="ab" * 32,
                          config={"report": {"min_cells": 100, "adjustment_bootstrap": 20}})
    if card is not None:
        store_card(out, card)
    for i, (sid, (n, drop_erythroid)) in enumerate(samples.items()):
        cells, ci, conf, prob = make_sample(n, seed=i)
        if drop_erythroid:
            for c in ("PEB", "EBO"):
                prob[:, CLASSES.index(c)] = 0.0
            prob /= prob.sum(axis=1, keepdims=True)
            ci = prob.argmax(axis=1).astype(np.int16)
            conf = prob.max(axis=1).astype(np.float32)
        zarr_store.write_sample(out, sid, cells, ci, conf, prob, CLASSES, {"mpp": 0.25})
    return out


SAMPLES = {"P-01": (400, False), "P-02": (300, True)}


def test_report_shows_the_adjusted_differential_first(tmp_path):
    out = _store(tmp_path / "out", SAMPLES, _card())
    assert load_stored_card(out).usable
    write_report(out)
    df = pd.read_csv(out / "differential.csv")
    assert df.columns.tolist() == COLUMNS
    for sid, rows in df.groupby("sample_id"):
        rows = rows.set_index("class")
        nucleated = [c for c in CLASSES if c not in NON_CELL]
        assert rows.loc[nucleated, "adjusted_percent"].sum() == pytest.approx(100.0)
        assert rows.loc[list(NON_CELL), "adjusted_percent"].isna().all()
        assert (rows.loc[nucleated, "adjusted_ci_low"] <= rows.loc[nucleated, "adjusted_ci_high"]).all()
        blast = rows.loc["blast_percent"]
        assert blast["adjusted_percent"] == pytest.approx(rows.loc["BLA", "adjusted_percent"])
        assert blast["adjusted_ci_low"] <= blast["adjusted_ci_high"]
        assert FLAG_NOT_ADJUSTED not in str(blast["flags"])
    # M:E: P-01 has erythroid cells (an adjusted ratio); P-02 none: empty and flagged, never inf.
    me = df[df["class"] == "M:E"].set_index("sample_id")
    assert me.loc["P-01", "adjusted_percent"] > 0 and not np.isinf(me.loc["P-01", "adjusted_percent"])
    assert pd.isna(me.loc["P-02", "percent"]) and pd.isna(me.loc["P-02", "adjusted_percent"])
    assert FLAG_NO_ERYTHROID in me.loc["P-02", "flags"].split(";")
    assert "inf" not in (out / "differential.csv").read_text()
    page = (out / "report" / "index.html").read_text()
    # The adjusted column comes before the raw one, in every sample's table.
    for table in re.findall(r"<table class=differential>.*?</table>", page):
        assert table.index("adjusted % of nucleated") < table.index("raw % of nucleated")
    assert len(re.findall(r"<table class=differential>", page)) == len(SAMPLES)
    assert "<b>Adjusted</b> shares (shown first)" in page and "cover both the sampling of cells" in page
    assert "cover the sampling of cells only" in page
    # The model, how good it is on data it did not train on (blasts first), next to its sha256.
    model = re.search(r"<p class=model>(.*?)</p>", page).group(1)
    assert "marrow-v3" in model and "ab" * 32 in model and "balanced accuracy <b>0.81</b>" in model
    assert model.index("BLA") < model.index("LYT")
    assert "Model flagged" not in page
    assert "no erythroid cells" in page


def test_a_poor_model_is_flagged_on_every_sample(tmp_path):
    out = _store(tmp_path / "out", SAMPLES, _card(balanced_accuracy=0.45, blast_recall=0.5))
    write_report(out)
    page = (out / "report" / "index.html").read_text()
    # Once at the top and once in every sample's section.
    assert page.count("Model flagged") == 1 + len(SAMPLES)
    assert "balanced accuracy 0.45 &lt; 0.7" in page and "blast recall 0.50 &lt; 0.7" in page
    df = pd.read_csv(out / "differential.csv")
    assert df["flags"].str.split(";").apply(lambda f: FLAG_MODEL_POOR in f).all()


def test_share_below_review_confidence_is_shown_and_flagged(tmp_path):
    out = _store(tmp_path / "out", {"P-01": (400, False)}, _card())
    cfg = RunConfig()
    import dataclasses

    cfg = dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, review_confidence=0.9,
                                                              adjustment_bootstrap=10))
    write_report(out, cfg)
    cells, _, _ = zarr_store.read_sample(out, "P-01")
    share = 100 * (cells["confidence"] < 0.9).mean()
    assert share > 25
    summary = pd.read_csv(out / "report" / "summary.csv").set_index("sample_id")
    assert summary.loc["P-01", "needs_review_percent"] == pytest.approx(share)
    assert FLAG_REVIEW in summary.loc["P-01", "flags"].split(";")
    page = (out / "report" / "index.html").read_text()
    assert f"({share:.1f} %)" in page and "below the review confidence 0.9" in page


def test_results_without_a_record_get_the_raw_differential_and_one_line(model_dir, tmp_path):
    old = old_model_dir(model_dir, tmp_path)
    labels = json.loads((old / "labels.json").read_text())["labels"]
    out = tmp_path / "out"
    zarr_store.init_store(out, class_names=labels, run_id="r", model_sha256="cd" * 32, config={})
    store_card(out, read_model_card(old))
    cells, ci, conf, prob = make_sample(50, seed=1, n_classes=len(labels))
    zarr_store.write_sample(out, "S", cells, ci, conf, prob, labels, {"mpp": 0.25})
    write_report(out)
    df = pd.read_csv(out / "differential.csv")
    assert df["adjusted_percent"].isna().all() and df["flags"].str.contains(FLAG_NOT_ADJUSTED).all()
    page = (out / "report" / "index.html").read_text()
    assert page.count("trained before slideproc recorded validation predictions") >= 1
    assert "balanced accuracy" in page  # still named, with its metrics.json figures
    # And a store written before model cards existed at all: the same, never an error.
    shutil.rmtree(zarr_store.store_path(out) / "model_card")
    write_report(out)
    assert "no record of the model" in (out / "report" / "index.html").read_text()


def test_the_record_follows_the_runs_test_time_views(model_dir):
    from slideproc.classify.calibration import CALIBRATION_FILE, calibrate, read_calibrations

    one = read_model_card(model_dir, tta_views=1)
    four = read_model_card(model_dir, tta_views=4)
    assert one.usable and four.usable and four.info["tta_views"] == 4
    with np.load(model_dir / "validation_views.npz") as data:
        raw, y = data["probabilities"], data["labels"]
    fit = read_calibrations(model_dir / CALIBRATION_FILE, 3)[4]
    assert (four.y_val == y).all()
    assert four.p_val == pytest.approx(np.asarray(calibrate(raw[:4].mean(axis=0), fit), np.float64))
    # One view: the CSV train wrote, calibrated as run's cells are with one view.
    assert one.p_val == pytest.approx(np.asarray(calibrate(raw[:1].mean(axis=0),
                                                           read_calibrations(model_dir / CALIBRATION_FILE, 3)[1]),
                                                 np.float64), abs=1e-6)


# ----------------------------------------------------------------------------
# evaluate --characterise: a lab's own labelled crops become the record
# ----------------------------------------------------------------------------
def test_evaluate_characterise_makes_the_labs_crops_the_record(model_dir, tmp_path, capsys):
    from slideproc.model_card import TRAIN_CARD_JSON, TRAIN_VALIDATION_CSV

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    train_csv, train_card = (model / VALIDATION_CSV).read_bytes(), (model / CARD_JSON).read_bytes()
    lab = write_class_folders(tmp_path / "lab", 5, seed=31, classes=["AAA", "BBB", "CCC"])
    for p in sorted((lab / "CCC").rglob("*.png"))[2:]:
        p.unlink()  # 5 AAA, 5 BBB, 2 CCC
    plain = tmp_path / "plain"
    assert main(["-q", "evaluate", str(model), str(lab), "--out", str(plain), "--batch-size", "4"]) == 0
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(model), str(lab), "--out", str(out), "--batch-size", "4",
                 "--characterise"]) == 0
    # This evaluate's differential still used training's record: the same as without --characterise.
    pd.testing.assert_frame_equal(pd.read_csv(out / "differential.csv"), pd.read_csv(plain / "differential.csv"))
    preds, record = pd.read_csv(out / "predictions.csv"), pd.read_csv(model / VALIDATION_CSV)
    cols = ["p_AAA", "p_BBB", "p_CCC"]
    assert record["path"].tolist() == preds["path"].tolist() and len(record) == 12
    assert record["true_class"].tolist() == preds["true_class"].tolist()
    assert record[cols].to_numpy() == pytest.approx(preds[cols].to_numpy(), abs=1e-8)
    card, old = json.loads((model / CARD_JSON).read_text()), json.loads(train_card)
    assert card["n_val"] == 12 and card["validation_counts"] == {"AAA": 5, "BBB": 5, "CCC": 2}
    assert card["record_source"] == str(lab) and "evaluate --characterise" in card["record"]
    assert card["train_counts"] == old["train_counts"] and card["balance"] == old["balance"]
    assert card["training_prior"] == pytest.approx(old["training_prior"])
    truth = preds["true_class"].map({"AAA": 0, "BBB": 1, "CCC": 2}).to_numpy()
    predicted = preds[cols].to_numpy().argmax(axis=1)
    assert card["confusion_matrix"]["matrix"] == [[int(((truth == i) & (predicted == j)).sum()) for j in range(3)]
                                                  for i in range(3)]
    # Training's own record is kept byte for byte, and not overwritten by a second characterisation.
    assert (model / TRAIN_VALIDATION_CSV).read_bytes() == train_csv
    assert (model / TRAIN_CARD_JSON).read_bytes() == train_card
    # The cards read: the lab's crops, also for a run with other test-time views (training's
    # per-view outputs describe its validation split, not these crops: never rebuilt from them).
    one, four = read_model_card(model, tta_views=1), read_model_card(model, tta_views=4)
    assert one.usable and (one.y_val == truth).all()
    assert (four.y_val == truth).all() and four.p_val == pytest.approx(one.p_val)
    # The report says which crops its figures and adjustment come from.
    from slideproc.report import _record_words
    assert _record_words(one) == f"12 crops from {lab} given to evaluate --characterise"
    n_val = len(pd.read_csv(model_dir / VALIDATION_CSV))
    assert _record_words(read_model_card(model_dir)) == f"its {n_val} validation crops"
    again = write_class_folders(tmp_path / "lab2", 3, seed=32, classes=["AAA", "BBB", "CCC"])
    assert main(["-q", "evaluate", str(model), str(again), "--out", str(tmp_path / "e2"), "--characterise"]) == 0
    assert json.loads((model / CARD_JSON).read_text())["n_val"] == 9
    assert (model / TRAIN_VALIDATION_CSV).read_bytes() == train_csv
    # A set without one of the model's classes: exit 2 before predicting, the record untouched.
    shutil.rmtree(again / "CCC")
    before = (model / VALIDATION_CSV).read_bytes()
    capsys.readouterr()
    assert main(["-q", "evaluate", str(model), str(again), "--out", str(tmp_path / "e3"), "--characterise"]) == 2
    assert "no crops of class(es) CCC" in capsys.readouterr().err
    assert (model / VALIDATION_CSV).read_bytes() == before and not (tmp_path / "e3").exists()
