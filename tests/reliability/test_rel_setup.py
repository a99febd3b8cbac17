"""Set-up mistakes said up front, exit 2, nothing written; names read back as written.

Real `slideproc` processes. The pre-run checks use the hand-made model of
test_rel_models.py (the layout `slideproc train` writes, no Keras needed):

- report settings that name classes the model does not have;
- KERAS_BACKEND naming a backend that is not installed (or none at all);
- a typo in an INPUT path;
- `--model MODEL_DIR/model.keras` (accepted: its folder) and `--model` at another file;
- sample ids that pandas' defaults misread (001, NA, 1e5, True) kept as text.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from rel_helpers import ENV, assert_one_line_error, copy_fields, slideproc, tree
from test_rel_models import LABELS, fake_model

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sample(fields, tmp_path_factory) -> Path:
    return copy_fields(fields, tmp_path_factory.mktemp("setup") / "sample")


# key -> (YAML, words of the one error line)
CLASS_CONFIGS = {
    "blast_class": ("report:\n  blast_class: FOO\n", ["'report.blast_class'", "'FOO'"]),
    "non_cell_classes": ("report:\n  non_cell_classes: [XYZ]\n", ["'report.non_cell_classes'", "'XYZ'"]),
    "myeloid_classes": ("report:\n  myeloid_classes: [BLA, PMO, MYX]\n", ["'report.myeloid_classes'", "'MYX'"]),
    "erythroid_classes": ("report:\n  erythroid_classes: [EBO, PEBB]\n", ["'report.erythroid_classes'", "'PEBB'"]),
    "reference_range": ("report:\n  reference_ranges:\n    - {name: blasts, classes: [BLAST], high_percent: 5}\n",
                        ["'report.reference_ranges[0].classes'", "'BLAST'"]),
}


@pytest.mark.parametrize("case", sorted(CLASS_CONFIGS))
def test_report_config_naming_classes_the_model_lacks_is_exit_2(case, sample, tmp_path):
    model = fake_model(tmp_path / "model")
    text, words = CLASS_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    # Before the fix: accepted, and the blast percent came out empty (or non-cells counted as nucleated).
    proc = slideproc("run", sample, "--mpp", "0.25", "--model", model, "--config", config, "--out", out)
    line = assert_one_line_error(proc, 2, *words, "which the model in", "its classes: ABE, ART")
    assert str(model) in line
    assert not out.exists(), tree(out)


def test_default_report_classes_are_fine_for_a_model_with_fewer_classes(sample, tmp_path):
    """The defaults describe the 21 Matek classes: a model trained on 7 lacks some, which is no error
    (the run gets past the check to the cluster; a short connect deadline ends it there)."""
    model = fake_model(tmp_path / "model")
    info = (model / "labels.json").read_text().replace('"ABE", ', "").replace(', "PMO"', "")
    (model / "labels.json").write_text(info)
    copy = tmp_path / "copy.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "default.yaml", copy)  # a copy of the defaults
    with open(copy, "a") as fh:
        fh.write("")
    from slideproc.config import check_report_classes, load_run_config

    labels = [x for x in LABELS if x not in ("ABE", "PMO", "KSC", "BLA")]
    assert check_report_classes(load_run_config(copy).report, labels) == [
        "the model has no class 'BLA' (report.blast_class): the blast percent stays empty"]


def test_report_command_checks_its_config_against_the_stored_classes(reference_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = {p: (out / p).read_bytes() for p in tree(out)}
    config = tmp_path / "bad.yaml"
    config.write_text("report:\n  blast_class: FOO\n")
    proc = slideproc("report", out, "--config", config)
    assert_one_line_error(proc, 2, "'report.blast_class'", "'FOO'")
    assert {p: (out / p).read_bytes() for p in tree(out)} == before


def _missing_backend() -> str | None:
    for name in ("torch", "openvino", "jax"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


@pytest.mark.parametrize("backend", ["nosuch", "missing"])
def test_keras_backend_that_is_not_installed_is_one_line_exit_2(backend, sample, tmp_path):
    if backend == "missing":
        backend = _missing_backend()
        if backend is None:
            pytest.skip("every Keras backend is installed here")
    model = fake_model(tmp_path / "model")
    out = tmp_path / "out"
    env = {**ENV, "KERAS_BACKEND": backend}
    import subprocess

    from rel_helpers import SLIDEPROC

    # Before the fix: every sample failed at stage "detect", exit 1, one line each.
    proc = subprocess.run([SLIDEPROC, "-q", "run", str(sample), "--mpp", "0.25", "--model", str(model),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    words = ["Keras does not have"] if backend == "nosuch" else [f"needs the Python package '{backend}'",
                                                                  "not installed"]
    assert_one_line_error(proc, 2, "KERAS_BACKEND", repr(backend), *words)
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "detect"])
def test_typo_in_an_input_path_is_exit_2_and_writes_nothing(command, sample, tmp_path):
    typo = sample.parent / (sample.name + "x")
    out = tmp_path / "out"
    extra = ["--model", fake_model(tmp_path / "model")] if command == "run" else []
    # Before the fix: exit 1, and an OUT_DIR with an empty report.
    proc = slideproc(command, sample, typo, "--mpp", "0.25", "--out", out, *extra)
    assert_one_line_error(proc, 2, f"input {typo} not found", "check the path")
    assert not out.exists(), tree(out)


def test_model_given_as_a_file_other_than_model_keras_says_which_folder(sample, tmp_path):
    model = fake_model(tmp_path / "model")
    out = tmp_path / "out"
    proc = slideproc("run", sample, "--mpp", "0.25", "--model", model / "labels.json", "--out", out)
    assert_one_line_error(proc, 2, f"--model {model / 'labels.json'} is a file",
                          "give the folder that holds model.keras")
    assert not out.exists()


def test_model_keras_file_is_taken_as_its_folder(sample, tiny_model, tmp_path):
    """`--model MODEL_DIR/model.keras` runs with MODEL_DIR (before: "model directory not found")."""
    out = tmp_path / "out"
    proc = slideproc("run", sample, "--mpp", "0.25", "--model", tiny_model / "model.keras", "--out", out,
                     "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    import json

    run = json.loads((out / "run.json").read_text())
    assert run["model"]["path"] == str(tiny_model.resolve())
    assert run["samples"]["sample"]["status"] == "complete"


AWKWARD_IDS = ["001", "NA", "1e5", "True"]


def test_sample_ids_pandas_would_misread_are_kept_as_text(fields, tmp_path):
    """Manifest sample ids 001, NA, 1e5, True: written exactly, and slideproc's own
    readers (score-detection here; tables.read_table) give them back as written."""
    import pandas as pd

    from slideproc.store.tables import read_table

    import shutil

    rows = ["sample_id,path,mpp"]
    for k, sid in enumerate(AWKWARD_IDS):  # a copy of the fields each: a file belongs to one sample
        copy = tmp_path / f"fields{k}"
        copy.mkdir()
        for png in sorted(fields.glob("*.png")):
            shutil.copy(png, copy / png.name)
            rows.append(f"{sid},{copy / png.name},0.25")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = slideproc("detect", manifest, "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (out / "cells").glob("*.csv")) == sorted(AWKWARD_IDS)
    for sid in AWKWARD_IDS:
        cells = read_table(out / "cells" / f"{sid}.csv")
        assert cells["sample_id"].tolist() == [sid] * len(cells) and len(cells) > 0
    # What pandas' defaults make of them (the README says how to read them instead):
    naive = pd.read_csv(out / "cells" / "NA.csv")
    assert naive["sample_id"].isna().all()
    # The synthetic truth of these fields, once per awkward id, scored by slideproc's reader.
    truth = read_table(fields.parents[1] / "truth.csv")
    # ``source`` in the outputs is the manifest's path for a manifest row (README, Inputs).
    truth = pd.concat([truth.assign(sample_id=sid, source=[str(tmp_path / f"fields{k}" / s) for s in truth["source"]])
                       for k, sid in enumerate(AWKWARD_IDS)], ignore_index=True)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    scores = tmp_path / "scores.csv"
    proc = slideproc("score-detection", out, tmp_path / "truth.csv", "--mpp", "0.25", "--csv", scores)
    assert proc.returncode == 0, proc.stderr
    table = read_table(scores)
    per_sample = table[table["sample_id"].isin(AWKWARD_IDS)]
    assert sorted(per_sample["sample_id"]) == sorted(AWKWARD_IDS)
    assert (per_sample["recall"] > 0.8).all(), per_sample
