"""The documents users read say what the tool does: ranges, classes, no citations of files that are not shipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slideproc.config import DEFAULT_REFERENCE_RANGES, load_run_config
from slideproc.schema import MATEK_CLASSES

REPO = Path(__file__).resolve().parents[1]


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _shipped_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "REFERENCE_RANGES.md", REPO / "RELIABILITY.md",
             REPO / "BENCHMARKS.md", REPO / "workers" / "README.md"]
    for pattern in ("slideproc/**/*.py", "slideproc/**/*.yaml", "configs/*.yaml", "workers/*"):
        files += sorted(REPO.glob(pattern))
    return [f for f in files if f.is_file()]


def test_no_shipped_file_cites_documents_that_are_not_in_the_repository():
    """CELLS.md, DESIGN.md and STYLE.md are development notes outside the product."""
    cited = []
    for f in _shipped_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if re.search(r"\b(CELLS|DESIGN|STYLE)\.md\b", line):
                cited.append(f"{f.relative_to(REPO)}:{n}")
    assert cited == []


def test_reference_range_table_matches_the_defaults_and_the_shipped_config():
    rows = _table_rows((REPO / "REFERENCE_RANGES.md").read_text(), "| range name |")
    documented = {}
    for name, classes, rng in rows:
        if name == "M:E ratio":
            continue
        low, high = (float(v) for v in rng.split("-"))
        documented[name] = (tuple(c.strip() for c in classes.split("+")), low, high)
    defaults = {r.name: (r.classes, r.low_percent, r.high_percent) for r in DEFAULT_REFERENCE_RANGES}
    assert documented == defaults
    shipped = load_run_config(REPO / "configs" / "default.yaml").report.reference_ranges
    assert {r.name: (r.classes, r.low_percent, r.high_percent) for r in shipped} == defaults


@pytest.mark.parametrize("group, key", [("myeloid", "myeloid_classes"), ("erythroid", "erythroid_classes"),
                                        ("non-cell", "non_cell_classes")])
def test_readme_class_table_lists_the_21_classes_with_the_default_groups(group, key):
    rows = _table_rows((REPO / "README.md").read_text(), "| class | cell |")
    assert sorted(r[0] for r in rows) == sorted(MATEK_CLASSES)
    in_group = {r[0] for r in rows if r[2].startswith(group)}
    assert in_group == set(getattr(load_run_config(None).report, key))


def _readme_command_lines() -> dict[str, str]:
    """The README's `## Command line` block: each subcommand's usage (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Command line"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    usage: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.startswith("slideproc "):
            name = line.split()[1]
            usage[name] = line
        elif line.strip() and name:
            usage[name] += " " + line.strip()
    return usage


def _subparsers():
    import argparse

    from slideproc.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_readme_and_help_list_the_same_subcommands_and_options():
    """Every subcommand and long option of `--help` is in the README's usage block, and nothing more."""
    usage = _readme_command_lines()
    parsers = _subparsers()
    assert sorted(usage) == sorted(parsers)
    for name, sub in parsers.items():
        written = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", usage[name]))
        actions = [a for a in sub._actions if a.option_strings and "--help" not in a.option_strings]
        missing = [a.option_strings for a in actions if not written & set(a.option_strings)]
        known = {o for a in actions for o in a.option_strings}
        assert missing == [] and written <= known, (name, missing, sorted(written - known))


def test_every_option_has_help_and_resolution_options_give_their_unit():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            assert action.help, f"slideproc {name} {action.option_strings or action.dest}: no help text"
            if any(o in ("--mpp", "--max-distance-um") for o in action.option_strings):
                assert "um" in action.help, f"slideproc {name} {action.option_strings}: no unit in {action.help!r}"
