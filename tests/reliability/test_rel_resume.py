"""Re-runs into an OUT_DIR: nothing deleted that the run was not asked to redo, nothing
reused that is no longer the same sample, nothing mixed, nothing raced.

Real `slideproc` processes, real files, results.zarr read back.

- `--no-resume` on one sample of a four-sample store redoes that one, keeps three;
  killed while redoing, the old sample is still there, whole;
- the cases README recipe: an image added to a sample folder and another --mpp:
  the sample is redone (the log says which and what changed), then reused;
- another model or other result settings than the store's: exit 2, store untouched;
  settings that change no result (engine, report) are no reason to refuse;
- `report` while a run writes into the same OUT_DIR: refused by the run's lock,
  the run unharmed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from rel_helpers import ENV, SLIDEPROC, assert_clean_stderr, assert_one_line_error, read_run, slideproc, tree

from engine_fixtures import archive_inputs, assert_same_outputs

pytestmark = pytest.mark.timeout(900)
KILLER = str(Path(__file__).with_name("killer.py"))


def _attrs(out: Path) -> dict:
    from slideproc.store import zarr_store

    return zarr_store.completed_sample_attrs(out)


def _snapshot(out: Path) -> dict:
    return {p: hashlib.sha256((out / p).read_bytes()).hexdigest() for p in tree(out) if p != ".slideproc.lock"}


def _one_slide(small_archive: Path) -> Path:
    return sorted((small_archive / "slides").iterdir())[0]


def test_no_resume_redoes_only_this_runs_samples(reference_run, small_archive, tiny_model, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = _attrs(out)
    assert len(before) == 4
    slide = _one_slide(small_archive)
    redone = slide.stem
    # Before the fix: exit 0, and the three other samples were gone from results.zarr and cells/.
    proc = slideproc("run", slide, "--no-resume", "--model", tiny_model, "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    after = _attrs(out)
    assert set(after) == set(before)
    for sid in before:
        if sid == redone:
            assert after[sid]["run_id"] != before[sid]["run_id"]
        else:
            assert after[sid] == before[sid]
    assert sorted(p.stem for p in (out / "cells").glob("*.csv")) == sorted(before)
    assert_same_outputs(reference_run, out)  # the redone sample gives the same cells; the others untouched
    run = read_run(out)
    assert run["samples"][redone]["status"] == "complete"
    assert run["samples"][redone]["redone_because"] == ["--no-resume"]
    assert set(run["samples"]) == {redone}


def test_a_redo_killed_before_its_commit_loses_nothing(reference_run, small_archive, tiny_model, tmp_path):
    """SIGKILL at the moment the redone sample would be committed: the old one is still complete."""
    from slideproc.store import zarr_store

    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = _attrs(out)
    slide = _one_slide(small_archive)
    cli = ["-q", "run", str(slide), "--no-resume", "--model", str(tiny_model), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen([sys.executable, KILLER, "slideproc.store.zarr_store:_commit", "1", "--", *cli],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _o, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert _attrs(out) == before
    cells, _p, attrs = zarr_store.read_sample(out, slide.stem)
    assert attrs["n_cells"] == len(cells) > 0
    # The plain re-run finds the same inputs: nothing to redo, nothing lost.
    res = slideproc("run", *archive_inputs(small_archive), "--model", tiny_model, "--out", out)
    assert res.returncode == 0, res.stderr
    assert all(s["status"] == "skipped" for s in read_run(out)["samples"].values())
    assert_same_outputs(reference_run, out)


def test_changed_sample_is_redone_saying_what_changed(fields, tiny_model, tmp_path):
    """The recipe of ../shared/data/cases/README.md ("A re-run into an OUT_DIR whose samples changed")."""
    from slideproc.store import zarr_store

    s1 = tmp_path / "in" / "S1"
    s1.mkdir(parents=True)
    a, b = sorted(fields.glob("*.png"))
    shutil.copy(a, s1 / "a.png")
    out = tmp_path / "R"
    first = slideproc("run", s1, "--mpp", "0.25", "--model", tiny_model, "--out", out, "--workers", "1")
    assert first.returncode == 0, first.stderr
    shutil.copy(b, s1 / "b.png")
    # Before the fix: exit 0, "resuming ... skipped"; the results held only a.png at 0.25, b.png never
    # processed or named, and the stored config said 0.3.
    second = slideproc("run", s1, "--mpp", "0.3", "--model", tiny_model, "--out", out, "--workers", "1")
    assert second.returncode == 0, second.stderr
    assert_clean_stderr(second.stderr)
    assert "S1: redoing it, its inputs changed since it was made: file(s) added: b.png; " \
           "mpp of a.png: 0.25 -> 0.3 um/px (user)" in second.stderr
    cells, _p, attrs = zarr_store.read_sample(out, "S1")
    assert attrs["sources"] == ["a.png", "b.png"] and attrs["mpp"] == [0.3, 0.3]
    assert attrs["made_from"]["mpp"] == {"a.png": 0.3, "b.png": 0.3}
    assert [f["name"] for f in attrs["made_from"]["files"]] == ["a.png", "b.png"]
    assert set(cells["source"]) == {"a.png", "b.png"}
    assert zarr_store.read_root_attrs(out)["config"]["source"]["mpp_um"] == 0.3
    assert read_run(out)["samples"]["S1"]["redone_because"] == [
        "file(s) added: b.png", "mpp of a.png: 0.25 -> 0.3 um/px (user)"]
    csv = pd.read_csv(out / "cells" / "S1.csv")
    assert set(csv["source"]) == {"a.png", "b.png"}
    # Unchanged now: reused, and said so without a warning.
    third = slideproc("run", s1, "--mpp", "0.3", "--model", tiny_model, "--out", out)
    assert third.returncode == 0 and third.stderr == "", third.stderr
    assert read_run(out)["samples"]["S1"]["status"] == "skipped"


def test_record_differences_name_each_change(fields, tmp_path):
    """resume.differences on real files: content and mtime changes, a file gone, another mpp."""
    from slideproc import resume
    from slideproc.config import RunConfig, to_dict
    from slideproc.sources.discover import discover

    s = tmp_path / "S"
    s.mkdir()
    a, b = sorted(fields.glob("*.png"))
    shutil.copy(a, s / "a.png")
    shutil.copy(b, s / "b.png")
    config = to_dict(RunConfig())
    record = resume.input_record(discover([s]).samples[0], config, "m" * 64)
    assert resume.differences(record, record) == []
    st = os.stat(s / "a.png")
    os.utime(s / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    (s / "b.png").unlink()
    new = resume.input_record(discover([s]).samples[0], config, "n" * 64)
    changes = resume.differences(record, new)
    assert changes[0] == "file(s) gone: b.png"
    assert changes[1].startswith("a.png changed (modified ")
    assert changes[-1] == "another model"
    shutil.copy(b, s / "a.png")  # other content, other size
    assert resume.differences(record, resume.input_record(discover([s]).samples[0], config, "m" * 64))[1] == (
        f"a.png changed ({a.stat().st_size} -> {b.stat().st_size} bytes)")
    assert resume.differences(None, record) == ["no record of what it was made from (written by an older slideproc)"]
    # The resolution, as plan.py resolves it from the headers and --mpp.
    from slideproc.config import with_overrides
    from slideproc.plan import plan_inputs

    shutil.copy(a, s / "a.png")
    recs = []
    for cfg_mpp in (0.25, 0.3):
        cfg = with_overrides(RunConfig(), {"source.mpp_um": cfg_mpp})
        planned = plan_inputs([s], cfg)
        recs.append(resume.input_record(planned.discovery.samples[0], to_dict(cfg), "m" * 64,
                                        sample_plan=planned.samples[0]))
    assert recs[1]["mpp"] == {"a.png": 0.3} and recs[1]["mpp_from"] == {"a.png": "user"}
    assert resume.differences(recs[0], recs[1]) == ["mpp of a.png: 0.25 -> 0.3 um/px (user)"]


def _other_model(tiny_model: Path, dest: Path) -> Path:
    """The same network re-packed (other bytes, other sha256): for slideproc another model."""
    shutil.copytree(tiny_model, dest)
    with zipfile.ZipFile(tiny_model / "model.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(dest / "model.keras", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in reversed(list(members)):
            zf.writestr(name, members[name])
    digest = hashlib.sha256((dest / "model.keras").read_bytes()).hexdigest()
    (dest / "model.sha256").write_text(f"{digest}  model.keras\n")
    # The copied record check is bound to the original model.keras and would be refused.
    (dest / "feature_record.npz").unlink(missing_ok=True)
    return dest


def test_another_model_or_other_settings_are_refused_never_mixed(reference_run, small_archive, tiny_model,
                                                                 tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = _snapshot(out)
    other = _other_model(tiny_model, tmp_path / "other")
    proc = slideproc("run", _one_slide(small_archive), "--model", other, "--out", out)
    assert_one_line_error(proc, 2, "holds 4 sample(s) made with another model", "never mixed", "choose a new --out")
    assert _snapshot(out) == before
    proc = slideproc("run", _one_slide(small_archive), "--model", other, "--out", out, "--no-resume")
    assert_one_line_error(proc, 2, "made with another model")
    config = tmp_path / "other.yaml"
    config.write_text("segment:\n  smoothing_um: 0.5\n")
    proc = slideproc("run", *archive_inputs(small_archive), "--model", tiny_model, "--out", out,
                     "--config", config)
    assert_one_line_error(proc, 2, "made with other settings (segment.smoothing_um: 0.4 -> 0.5)")
    assert _snapshot(out) == before
    # Settings that change no result: reused, not refused.
    config.write_text("engine:\n  tiles_in_flight_per_worker: 2\nreport:\n  min_cells: 100\n"
                      "classify:\n  batch_size: 16\n")
    proc = slideproc("run", *archive_inputs(small_archive), "--model", tiny_model, "--out", out,
                     "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert all(s["status"] == "skipped" for s in read_run(out)["samples"].values())


def test_report_while_a_run_writes_is_refused_and_the_run_is_unharmed(reference_run, small_archive, tiny_model,
                                                                      tmp_path):
    out = tmp_path / "out"
    run = subprocess.Popen([SLIDEPROC, "-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model),
                            "--out", str(out), "--workers", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and not (out / "results.zarr" / "zarr.json").exists():
        time.sleep(0.1)
    assert run.poll() is None, run.communicate()
    # Before the fix: report removed the run's in-flight temporaries (the run then failed with
    # "cannot write ...; free disk space"), or failed with "sample ... is not in results.zarr".
    report = slideproc("report", out)
    _o, err = run.communicate(timeout=600)
    assert_one_line_error(report, 2, f"{out} is in use by another slideproc process")
    assert run.returncode == 0, err
    assert_same_outputs(reference_run, out)
    after = slideproc("report", out)
    assert after.returncode == 0, after.stderr
