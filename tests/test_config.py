"""slideproc/config.py: defaults, round trips, validation that names the key, CLI exit 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slideproc import config as C
from slideproc.cli import main
from slideproc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _sections(cls):
    """(dotted prefix, dataclass) for every nested section of a config class."""
    out = []

    def walk(c, prefix):
        out.append((prefix, c))
        for f in dataclasses.fields(c):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}.{f.name}" if prefix else f.name)

    walk(cls, "")
    return out


# ----------------------------------------------------------------------------
# defaults
# ----------------------------------------------------------------------------
def test_default_files_load_and_equal_the_dataclass_defaults():
    run = C.load_run_config()
    train = C.load_train_config()
    assert isinstance(run, C.RunConfig) and isinstance(train, C.TrainConfig)
    # default.yaml documents every default: loading it changes nothing.
    assert run == C.RunConfig()
    assert run.source.working_mpp_um == 0.5 and run.source.fallback_mpp_um is None
    assert run.tiling.tile_size_px == 1024


def test_repository_configs_match_the_packaged_ones():
    for name in ("default.yaml", "train.yaml"):
        assert (REPO / "configs" / name).read_bytes() == (C.PACKAGE_CONFIG_DIR / name).read_bytes()


def test_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    assert C.load_run_config(p) == C.RunConfig()
    assert C.load_train_config(p) == C.TrainConfig()


# ----------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [C.RunConfig, C.TrainConfig])
def test_round_trip_whole_config(cls, tmp_path):
    cfg = cls()
    assert C.config_from_dict(cls, C.to_dict(cfg)) == cfg
    p = tmp_path / "c.yaml"
    C.dump_yaml(cfg, p)
    loaded = C.load_run_config(p) if cls is C.RunConfig else C.load_train_config(p)
    assert loaded == cfg


@pytest.mark.parametrize(
    "prefix,section",
    [s for s in _sections(C.RunConfig) + _sections(C.TrainConfig) if s[0]],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_section_round_trips(prefix, section):
    obj = section()
    assert C.config_from_dict(section, C.to_dict(obj)) == obj
    # and through YAML text (tuples become lists and come back as tuples)
    again = C.config_from_dict(section, yaml.safe_load(yaml.safe_dump(C.to_dict(obj))))
    assert again == obj


def test_non_default_values_round_trip():
    cfg = C.with_overrides(C.RunConfig(), {
        "source.fallback_mpp_um": 0.3,
        "tiling.tile_size_px": 512,
        "report.myeloid_classes": ["BLA", "PMO"],
        "engine.workers": 3,
    })
    assert cfg.report.myeloid_classes == ("BLA", "PMO")
    assert C.config_from_dict(C.RunConfig, C.to_dict(cfg)) == cfg


# ----------------------------------------------------------------------------
# validation names the dotted key
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data,key",
    [
        ({"tiling": {"tile_sise_px": 512}}, "tiling.tile_sise_px"),  # unknown key
        ({"nonsense": 1}, "nonsense"),  # unknown section
        ({"tiling": {"tile_size_px": "big"}}, "tiling.tile_size_px"),  # wrong type
        ({"tiling": {"tile_size_px": 512.0}}, "tiling.tile_size_px"),  # float for int
        ({"tiling": {"tile_size_px": True}}, "tiling.tile_size_px"),  # bool is not an int
        ({"tiling": {"tile_size_px": -512}}, "tiling.tile_size_px"),  # negative size
        ({"tiling": {"overlap_um": -1.0}}, "tiling.overlap_um"),
        ({"source": {"working_mpp_um": 0}}, "source.working_mpp_um"),
        ({"source": {"working_mpp_um": float("nan")}}, "source.working_mpp_um"),
        ({"source": {"working_mpp_um": float("inf")}}, "source.working_mpp_um"),
        ({"source": {"fallback_mpp_um": "0.25"}}, "source.fallback_mpp_um"),
        ({"source": {"working_mpp_um": 10**400}}, "source.working_mpp_um"),
        ({"tiling": {"tile_size_px": 10**400}}, "tiling.tile_size_px"),
        ({"tiling": {"foreground_min_saturation": 1.5}}, "tiling.foreground_min_saturation"),
        ({"report": {"myeloid_classes": "BLA"}}, "report.myeloid_classes"),
        ({"report": {"myeloid_classes": ["BLA", 3]}}, "report.myeloid_classes[1]"),
        ({"classify": {"mixed_precision": "fp8"}}, "classify.mixed_precision"),
        ({"segment": {"nuclear_weights": [1.0, -0.5]}}, "segment.nuclear_weights"),
        ({"segment": {"nuclear_weights": [0.0, 0.0, 0.0]}}, "segment.nuclear_weights"),
        ({"segment": {"nuclear_weights": [1.0, "x", 0.0]}}, "segment.nuclear_weights[1]"),
        ({"segment": {"also_weights": [5.0, 0.0]}}, "segment.also_weights"),
        ({"engine": {"workers": 0}}, "engine.workers"),
        ({"tiling": [1, 2]}, "tiling"),  # a section that is not a mapping
        # overlap >= half a tile: 256 um = 512 px at 0.5 um/px on a 1024 px tile
        ({"tiling": {"overlap_um": 256.0}}, "tiling.overlap_um"),
        # 127.9 um = 255.8 px, rounded up by tiling to 256 px: no core left in 512 px
        ({"tiling": {"overlap_um": 127.9, "tile_size_px": 512}}, "tiling.overlap_um"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        C.config_from_dict(C.RunConfig, data)
    assert f"'{key}'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data,key",
    [
        ({"model": {"input_size_px": 32}}, "model.input_size_px"),
        ({"training": {"val_fraction": 1.0}}, "training.val_fraction"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"modle": {}}, "modle"),
    ],
)
def test_bad_train_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=f"'{key}'".replace("[", r"\[").replace("]", r"\]")):
        C.config_from_dict(C.TrainConfig, data)


def test_top_level_not_a_mapping():
    with pytest.raises(ConfigError, match="top level"):
        C.config_from_dict(C.RunConfig, [1, 2, 3])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  tile_size_px: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line"):
        C.load_run_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("tiling:\n  tile_size: 512\n")
    with pytest.raises(ConfigError) as info:
        C.load_run_config(unknown)
    assert str(unknown) in str(info.value) and "'tiling.tile_size'" in str(info.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        C.load_run_config(binary)
    with pytest.raises(ConfigError, match="not found"):
        C.load_run_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        C.load_run_config(tmp_path)  # a directory


def test_with_overrides_builds_a_new_object():
    base = C.load_run_config()
    new = C.with_overrides(base, {"source.fallback_mpp_um": 0.25, "tiling.tile_size_px": None})
    assert new is not base
    assert new.source.fallback_mpp_um == 0.25
    assert base.source.fallback_mpp_um is None  # the original is untouched
    assert new.tiling == base.tiling  # None = flag not given
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.source.working_mpp_um = 1.0  # type: ignore[misc]
    # overrides are validated like the file
    with pytest.raises(ConfigError, match="'source.fallback_mpp_um'"):
        C.with_overrides(base, {"source.fallback_mpp_um": -1.0})
    for key in ("source.nope", "nope.key", "source.working_mpp_um.deeper"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            C.with_overrides(base, {key: 1})
    with pytest.raises(ConfigError, match="'tiling' must be a mapping"):
        C.with_overrides(base, {"tiling": 1})


# ----------------------------------------------------------------------------
# via the CLI: exit 2, one line on stderr, no traceback
# ----------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown": ("tiling:\n  tile_sise_px: 512\n", "tiling.tile_sise_px"),
    "type": ("tiling:\n  tile_size_px: huge\n", "tiling.tile_size_px"),
    "negative": ("tiling:\n  tile_size_px: -5\n", "tiling.tile_size_px"),
    "overlap": ("tiling:\n  overlap_um: 300\n", "tiling.overlap_um"),
    "yaml": ("tiling: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_cli_bad_config_exit_2(name, tmp_path, capsys):
    text, expect = BAD_CONFIGS[name]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    rc = main(["info", "--config", str(cfg), str(tmp_path / "whatever.svs")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert expect in lines[0] and "Traceback" not in err


def test_cli_bad_config_subprocess(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("source:\n  working_mpp_um: -0.5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "slideproc.cli", "info", "--config", str(cfg), "X"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "'source.working_mpp_um'" in lines[0]


# ----------------------------------------------------------------------------
# fuzz: whatever the YAML holds, only ConfigError comes out
# ----------------------------------------------------------------------------
_KEYS = st.sampled_from(
    sorted({f.name for _, sec in _sections(C.RunConfig) for f in dataclasses.fields(sec)})
    + ["", "x", "1", "tiling.tile_size_px"]
)
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from([10**30, -(10**30), 10**400, 0, -1, 0.0, 1e-320, 1e308])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_KEYS | st.integers() | st.none(), children, max_size=4),
    max_leaves=12,
)


@st.composite
def _config_dicts(draw):
    """Mostly valid structure with random leaves, sometimes random everywhere."""
    if draw(st.booleans()):
        return draw(_VALUES)
    data = C.to_dict(C.RunConfig())
    for section in draw(st.lists(st.sampled_from(sorted(data)), max_size=3)):
        keys = sorted(data[section])
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3)):
            data[section][key] = draw(_VALUES)
    if draw(st.booleans()):
        data[draw(_KEYS)] = draw(_VALUES)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config_dicts())
def test_fuzz_only_config_errors(data):
    try:
        cfg = C.config_from_dict(C.RunConfig, data)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return
    # what is accepted round-trips
    assert C.config_from_dict(C.RunConfig, C.to_dict(cfg)) == cfg


@settings(max_examples=100, deadline=None)
@given(_VALUES)
def test_fuzz_train_only_config_errors(data):
    try:
        C.config_from_dict(C.TrainConfig, data)
    except ConfigError:
        pass


def test_shipped_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    """The README writes `--config configs/od-red-channel.yaml`; run from any
    folder, that (or the bare name) is the shipped file, while a file of that
    name that exists where the user points always wins."""
    from slideproc.config import ConfigError, load_run_config

    monkeypatch.chdir(tmp_path)
    # The grey-red-cell preset of stop 20 became the default: its file gives it.
    assert load_run_config("configs/blood-grey-red-cells.yaml") == load_run_config(None)
    for name in ("configs/od-red-channel.yaml", "od-red-channel.yaml"):
        seg = load_run_config(name).segment
        assert seg.nuclear_weights == (1.0, 0.0, -0.5) and seg.also_weights == () and seg.small_nucleus_min_od == 0
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "od-red-channel.yaml").write_text("segment:\n  min_nucleus_area_um2: 12.0\n")
    local = load_run_config("configs/od-red-channel.yaml").segment
    assert local.min_nucleus_area_um2 == 12.0 and local.nuclear_weights == (0.0, 1.0, -1.0)
    with pytest.raises(ConfigError, match=r"config file not found: configs/nope\.yaml \(shipped .*od-red-channel\.yaml"):
        load_run_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "elsewhere" / "od-red-channel.yaml")  # a real path is never replaced
