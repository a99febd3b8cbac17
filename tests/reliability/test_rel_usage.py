"""Bad configuration and bad manifests: one line naming the key or row, exit 2,
nothing written (OUT_DIR not even created). Real `slideproc` processes.

tests/test_config.py and tests/test_discover.py test the parsers' messages in
depth; this file checks what the command line does with them, and fuzzes the
whole argument handling of ``main``.
"""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rel_helpers import assert_one_line_error, copy_fields, slideproc, tree

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sample(fields, tmp_path_factory) -> Path:
    return copy_fields(fields, tmp_path_factory.mktemp("usage") / "sample")


CONFIGS = {
    "unknown_key": ("tiling:\n  bogus: 3\n", "unknown config key 'tiling.bogus'"),
    "unknown_section": ("tilling:\n  tile_size_px: 512\n", "'tilling'"),
    "wrong_type": ("tiling:\n  tile_size_px: big\n", "'tiling.tile_size_px' must be an integer"),
    "wrong_type_bool": ("classify:\n  batch_size: true\n", "'classify.batch_size'"),
    "negative_tile": ("tiling:\n  tile_size_px: -5\n", "'tiling.tile_size_px' must be > 0"),
    "negative_fov": ("crops:\n  field_of_view_um: -1\n", "'crops.field_of_view_um' must be > 0"),
    "negative_mpp": ("source:\n  working_mpp_um: -0.5\n", "'source.working_mpp_um'"),
    "zero_batch": ("classify:\n  batch_size: 0\n", "'classify.batch_size'"),
    "nan_overlap": ("tiling:\n  overlap_um: .nan\n", "'tiling.overlap_um'"),
    "overlap_larger_than_tile": ("tiling:\n  tile_size_px: 64\n  overlap_um: 400\n",
                                 "'tiling.overlap_um' (400.0 um = 800 px at 0.5 um/px) must be less than half"),
    "not_yaml": ("tiling: [1, 2\n", "is not valid YAML"),
    "not_a_mapping": ("- 1\n- 2\n", "config"),
}


def in_process(*args) -> subprocess.CompletedProcess:
    """``main(["-q", *args])`` in this process, shaped like a finished process
    (cheap enough for the large matrices; the console script is run for a
    representative case of each matrix)."""
    from slideproc.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(["-q", *map(str, args)])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("command", ["detect", "run"])
def test_bad_config_is_one_line_exit_2_nothing_written(case, command, sample, tmp_path):
    text, words = CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    model = ["--model", tmp_path / "no-model"] if command == "run" else []
    real = case == "overlap_larger_than_tile"
    proc = (slideproc if real else in_process)(command, sample, "--mpp", "0.25", *model, "--config", config,
                                               "--out", out)
    assert_one_line_error(proc, 2, words)
    assert not out.exists(), tree(out)


def test_missing_config_file(sample, tmp_path):
    out = tmp_path / "out"
    proc = slideproc("detect", sample, "--config", tmp_path / "nope.yaml", "--out", out)
    assert_one_line_error(proc, 2, "config file not found", "nope.yaml")
    assert not out.exists()


MANIFESTS = {
    "duplicate_row": ("A,{img},0.25\nA,{img},0.25\n", "line 3: sample 'A' lists", "twice; remove the duplicate row"),
    "parent_escape": ("../x,{img},0.25\n", "sample_id '../x' is not allowed", "no path separators"),
    "deep_escape": ("../../etc/x,{img},0.25\n", "sample_id '../../etc/x' is not allowed", "line 2"),
    "absolute": ("/tmp/x,{img},0.25\n", "sample_id '/tmp/x' is not allowed", "line 2"),
    "separator": ("a/b,{img},0.25\n", "sample_id 'a/b' is not allowed", "line 2"),
    "backslash": ("a\\b,{img},0.25\n", "is not allowed", "line 2"),
    "dot": (".,{img},0.25\n", "sample_id '.' is not allowed", "line 2"),
    "bad_mpp": ("A,{img},-1\n", "mpp must be a positive number", "line 2"),
    "unknown_column": (None, "unknown manifest column", "'slide'"),
    "empty": ("", "manifest lists no samples", "manifest.csv"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
@pytest.mark.parametrize("command", ["detect", "run"])
def test_bad_manifest_is_refused_nothing_written(case, command, sample, tmp_path):
    rows, *words = MANIFESTS[case]
    img = sorted(sample.glob("*.png"))[0]
    manifest = tmp_path / "manifest.csv"
    if rows is None:
        manifest.write_text(f"sample_id,path,slide\nA,{img},x\n")
    else:
        manifest.write_text("sample_id,path,mpp\n" + rows.format(img=img))
    out = tmp_path / "out"
    model = ["--model", tmp_path / "no-model"] if command == "run" else []
    proc = (slideproc if case == "parent_escape" else in_process)(command, manifest, *model, "--out", out)
    assert_one_line_error(proc, 2, *words)
    assert not out.exists(), tree(out)
    assert not (tmp_path / "x").exists() and not Path("/tmp/x").exists()


def test_two_inputs_with_the_same_sample_id_are_refused(sample, tmp_path):
    other = copy_fields(sample, tmp_path / "elsewhere" / sample.name)
    out = tmp_path / "out"
    proc = slideproc("detect", sample, other, "--mpp", "0.25", "--out", out)
    assert_one_line_error(proc, 2, f"two inputs give the same sample_id {sample.name!r}")
    assert not out.exists()


# -- fuzzing the whole command line -------------------------------------------
_TOKENS = st.sampled_from([
    "run", "detect", "info", "report", "evaluate", "score-detection", "--out", "--model", "--config",
    "--mpp", "--workers", "--scheduler", "--no-resume", "--save-crops", "--debug", "-v", "-q", "0", "-1",
    "nan", "1e309", "0.25", "x", "", "--", "-", "=", "--mpp=abc", "--workers=0", "\x00", "é", "a b",
])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=7), data=st.data())
def test_fuzz_cli_arguments_never_crash(argv, data, tmp_path_factory):
    """Any argv: an int exit status (or argparse's SystemExit for --help/--version),
    never an exception escaping main, never a traceback on stderr. Paths point into
    an empty scratch folder, so nothing heavy can start."""
    from slideproc.cli import main

    scratch = tmp_path_factory.mktemp("fuzz")
    # Path-like arguments go to missing files in the scratch folder (never the cwd).
    argv = [str(scratch / a.strip("/\x00")) if a and not a.startswith("-") and a not in
            {"run", "detect", "info", "report", "evaluate", "score-detection"} and data.draw(st.booleans())
            else a for a in argv]
    argv = [a for a in argv if a != "--debug"]  # --debug re-raises on purpose
    err, out = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(scratch)  # relative paths land in the scratch folder
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as exc:  # -h / --version
                rc = exc.code or 0
    finally:
        os.chdir(cwd)
    assert rc in (0, 1, 2), (argv, rc, err.getvalue())
    assert "Traceback" not in err.getvalue()
