"""What a synthetic sample holds: class proportions per sample type, and exact counts.

Normal ranges are the "typical adult" marrow differential of REFERENCE_RANGES.md
(% of nucleated cells); a sample draws each class within its range, and the
abnormal types override one group. Counts are rounded by largest remainder so
they add up to the number of cells asked for, exactly.
"""

from __future__ import annotations

import numpy as np

SAMPLE_TYPES = ("normal", "aml", "myeloma", "erythroid")

# % of nucleated cells, typical adult marrow (REFERENCE_RANGES.md). Classes it gives
# no range for (rare or non-cell) get small ones so every class shows up.
NORMAL_RANGES = {
    "BLA": (0.5, 3), "PMO": (2, 8), "MYB": (10, 15), "MMZ": (10, 15), "NGB": (10, 15),
    "NGS": (7, 30), "EOS": (1, 4), "BAS": (0, 1), "MON": (0.5, 2), "LYT": (5, 15),
    "PLM": (0.5, 2), "PEB": (1, 3), "EBO": (14, 22), "LYI": (0.3, 1), "HAC": (0, 0.5),
    "FGC": (0, 0.3), "ABE": (0, 0.3), "OTH": (0.3, 1), "ART": (1, 3), "NIF": (1, 3), "KSC": (0.5, 2),
}
# The abnormal types fix one group's share of all nucleated cells; the rest scale to fill.
OVERRIDES = {
    "aml": {"BLA": (30, 80), "FGC": (0, 3), "ABE": (0, 3)},
    "myeloma": {"PLM": (10, 50)},
    "erythroid": {"EBO": (42, 55), "PEB": (4, 8)},   # erythroid >= 46 %: M:E < 1
}


def proportions(sample_type: str, rng: np.random.Generator, classes=None) -> dict[str, float]:
    """Fractions (sum 1) of each class for a sample of ``sample_type``, restricted to ``classes``."""
    if sample_type not in SAMPLE_TYPES:
        raise ValueError(f"unknown sample type {sample_type!r}; use one of {', '.join(SAMPLE_TYPES)}")
    classes = list(classes or NORMAL_RANGES)
    base = {c: rng.uniform(*NORMAL_RANGES.get(c, (0.5, 2))) for c in classes}
    fixed = {c: rng.uniform(*r) for c, r in OVERRIDES.get(sample_type, {}).items() if c in base}
    free = {c: v for c, v in base.items() if c not in fixed}
    room = max(100.0 - sum(fixed.values()), 0.0)
    scale = room / max(sum(free.values()), 1e-9)
    out = {c: v * scale for c, v in free.items()}
    out.update(fixed)
    tot = sum(out.values())
    return {c: out[c] / tot for c in classes}


def counts(props: dict[str, float], n: int) -> dict[str, int]:
    """Integer counts summing to ``n`` (largest remainder)."""
    classes = list(props)
    raw = np.array([props[c] for c in classes]) * n
    k = np.floor(raw).astype(int)
    order = np.argsort(-(raw - k), kind="stable")
    k[order[: n - int(k.sum())]] += 1
    return {c: int(v) for c, v in zip(classes, k)}
