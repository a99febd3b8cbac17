"""How far a differential is from the truth: classify-and-count vs the adjusted estimate.

    python benchmarks/bench_differential.py --val VAL_PREDICTIONS.csv --test TEST_PREDICTIONS.csv
    python benchmarks/bench_differential.py --val VAL_PREDICTIONS.csv --cross-fit   # method choice
    python benchmarks/bench_differential.py --val VAL_PREDICTIONS.csv --test TEST_PREDICTIONS.csv --split-test

VAL_PREDICTIONS.csv characterises the model (its validation predictions: MODEL_DIR/
validation_predictions.csv, or `slideproc evaluate MODEL_DIR VAL_DIR`'s predictions.csv);
TEST_PREDICTIONS.csv holds calibrated predictions on crops that neither trained, tuned nor
characterised the model (`slideproc evaluate MODEL_DIR /work/matek_split/test`): the cells
patients are drawn from. With --cross-fit there is no test file: the validation crops are
cut in two halves (stratified, seeded); each half characterises the model while patients
are drawn from the other, and the figures are pooled. Method choice uses this mode only,
so the test crops never decide anything. With --split-test the test crops are cut in two
halves the same way; patients drawn from one half are estimated twice, with the model
characterised on the other test half ("[test half]": crops that neither chose the epoch nor
fitted the calibration) and on VAL ("[val]"), the same patients both times.

A patient: a composition's class shares (percent of nucleated cells, over the model's
nucleated classes) perturbed per patient (Dirichlet, concentration --concentration), then
--cells nucleated cells drawn from it (multinomial) plus non-cell objects (ART, NIF: about
--non-cell-percent of all objects), each cell a crop of its class drawn with replacement.
Figures, per method:

- error: estimate - share among the counted nucleated cells (what a perfect classifier
  would report), in percentage points: MAE over classes and patients, the worst mean bias
  of one class in one composition, the blast-% MAE per composition;
- coverage: how often the 95 % interval holds the patient's share (the marrow's, which the
  interval claims to cover since it includes the sampling of cells), over classes x
  patients, and for blasts; the lowest per class x composition; the median width.

The raw differential's interval is the exact binomial one (Clopper-Pearson) it reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slideproc.quantify import (METHODS, exact_interval, fit_quantifier, interval,  # noqa: E402
                               interval_with_sampling, quantify)

NON_CELL = ("ART", "NIF", "KSC")
BLAST = "BLA"

# Shares (percent of nucleated cells) over the six nucleated Matek classes in the developer
# split (BLA, PMO, NGS, EOS, MON, LYT). A real marrow has more lineages (myelocytes, bands,
# erythroid precursors, plasma cells) that this model does not know; their share is folded
# into the nearest known class so the proportions between lineages stay close to the sources.
COMPOSITIONS = {
    # Normal adult marrow: blasts 0-3 %, promyelocytes 2-8 %, eosinophils 1-4 %, monocytes
    # 0-2 %, lymphocytes 5-15 % of all nucleated cells (Bain 1996, Br J Haematol 94:206;
    # the ranges in configs/default.yaml); granulocytic stages after the promyelocyte as NGS.
    "normal": {"BLA": 2, "PMO": 6, "NGS": 56, "EOS": 4, "MON": 3, "LYT": 29},
    # AML (WHO: >= 20 % blasts; here ~50 %, a typical de novo AML at diagnosis).
    "AML": {"BLA": 50, "PMO": 4, "NGS": 25, "EOS": 2, "MON": 4, "LYT": 15},
    # APL, t(15;17): hypergranular promyelocytes dominate (~57 % here).
    "APL": {"BLA": 8, "PMO": 57, "NGS": 16, "EOS": 1, "MON": 3, "LYT": 15},
    # Acute monocytic leukaemia / AML with monocytic differentiation: monocytes and blasts.
    "monocytic": {"BLA": 25, "PMO": 3, "NGS": 18, "EOS": 2, "MON": 40, "LYT": 12},
    # Lymphoid infiltration (CLL in marrow, > 30 % lymphocytes).
    "lymphoid": {"BLA": 2, "PMO": 3, "NGS": 20, "EOS": 2, "MON": 3, "LYT": 70},
    # Hypereosinophilic syndrome / eosinophilia (eosinophils ~30 %).
    "eosinophilia": {"BLA": 3, "PMO": 5, "NGS": 40, "EOS": 30, "MON": 4, "LYT": 18},
    # MDS with excess blasts (MDS-EB2: 10-19 % blasts; WHO 2016).
    "MDS-EB2": {"BLA": 15, "PMO": 6, "NGS": 45, "EOS": 3, "MON": 6, "LYT": 25},
    # At the AML threshold: 20 % blasts.
    "threshold": {"BLA": 20, "PMO": 5, "NGS": 42, "EOS": 3, "MON": 5, "LYT": 25},
    # CML chronic phase: granulocytic hyperplasia with eosinophilia, blasts < 10 %.
    "CML-CP": {"BLA": 3, "PMO": 9, "NGS": 65, "EOS": 7, "MON": 4, "LYT": 12},
    # ALL: lymphoblasts (counted as blasts) > 80 %.
    "ALL": {"BLA": 85, "PMO": 1, "NGS": 5, "EOS": 1, "MON": 1, "LYT": 7},
    # Chronic myelomonocytic leukaemia: monocytosis, blasts < 10 %.
    "CMML": {"BLA": 5, "PMO": 4, "NGS": 45, "EOS": 2, "MON": 22, "LYT": 22},
}


def read_predictions(path: Path, views: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, true class index (n,), calibrated probabilities (n, C)) from a predictions CSV, or
    from a MODEL_DIR: its record as ``run`` with ``classify.tta_views = views`` reads it
    (slideproc.model_card.read_model_card; None: the record as written)."""
    if path.is_dir():
        from slideproc.model_card import read_model_card

        card = read_model_card(path, tta_views=views)
        if not card.usable:
            raise SystemExit(f"{path}: {card.missing}")
        return list(card.labels), card.y_val, card.p_val
    df = pd.read_csv(path)
    labels = [c[2:] for c in df.columns if c.startswith("p_")]
    index = {c: i for i, c in enumerate(labels)}
    return labels, df["true_class"].map(index).to_numpy(int), df[[f"p_{c}" for c in labels]].to_numpy(np.float64)


def composition_vector(comp: dict, labels: list[str]) -> np.ndarray:
    v = np.array([float(comp.get(c, 0.0)) for c in labels])
    return v / v.sum()


def draw_patient(rng, nominal: np.ndarray, pools: dict[int, np.ndarray], nucleated: np.ndarray,
                 non_cell: list[int], n_cells: int, concentration: float, non_cell_share: float):
    """(indices into the test pool, patient marrow shares (C,), counted shares (C,))."""
    p = np.zeros_like(nominal)
    present = nominal > 0
    p[present] = rng.dirichlet(concentration * nominal[present])
    counts = rng.multinomial(n_cells, p)
    extra = rng.binomial(round(n_cells * non_cell_share / (1 - non_cell_share)) * 2, 0.5) if non_cell else 0
    idx = [rng.choice(pools[c], size=k, replace=True) for c, k in enumerate(counts) if k]
    if non_cell and extra:
        per = rng.multinomial(extra, np.ones(len(non_cell)) / len(non_cell))
        idx += [rng.choice(pools[c], size=k, replace=True) for c, k in zip(non_cell, per) if k]
    return np.concatenate(idx), p, counts / counts.sum()


def nucleated_shares(v: np.ndarray, nucleated: np.ndarray) -> np.ndarray:
    """Shares over the nucleated classes only (last axis), others 0."""
    out = np.where(nucleated, v, 0.0)
    s = out.sum(axis=-1, keepdims=True)
    return np.divide(out, s, out=np.full_like(out, np.nan), where=s > 0)


def evaluate_methods(methods, char, test, labels, args, seed_offset=0, tag="", mix=None) -> list[dict]:
    """Per (method, composition, patient, class): estimate, interval, truth rows.

    ``tag`` is appended to the method names (``emq-bcts [val]``); ``mix`` (labels (n,)) sets the
    "training mix" composition (default: the characterisation labels). The patients drawn depend
    only on ``test``, ``args`` and ``seed_offset``, so two calls that differ in ``char`` draw the
    same patients (a paired comparison)."""
    y_val, p_val = char
    y_test, p_test = test
    C = len(labels)
    nucleated = np.array([c not in NON_CELL for c in labels])
    non_cell = [i for i, c in enumerate(labels) if c in NON_CELL and np.any(y_test == i)]
    pools = {c: np.flatnonzero(y_test == c) for c in range(C)}
    rows = []
    fitted = {}
    for m in methods:
        if m == "cc":
            continue
        t0 = time.perf_counter()
        fitted[m] = fit_quantifier(y_val, p_val, m, n_boot=args.bootstrap, seed=args.seed + seed_offset)
        print(f"  fitted {m} on {len(y_val)} validation crops in {time.perf_counter() - t0:.1f} s", flush=True)
    # The mix the model was characterised on (its validation split, here over nucleated
    # classes): the adjustment must not make such a sample worse.
    mix = y_val if mix is None else mix
    val_mix = {labels[c]: float(np.sum(mix == c)) for c in np.flatnonzero(nucleated)}
    for name, comp in {**COMPOSITIONS, "training mix": val_mix}.items():
        nominal = composition_vector(comp, labels)
        rng = np.random.default_rng([args.seed + seed_offset, zlib.crc32(name.encode())])
        for patient in range(args.patients):
            idx, marrow, counted = draw_patient(rng, nominal, pools, nucleated, non_cell, args.cells,
                                                args.concentration, args.non_cell_percent / 100)
            probs = p_test[idx]
            marrow_n = nucleated_shares(marrow, nucleated)
            counted_n = nucleated_shares(counted, nucleated)
            for m in methods:
                if m == "cc":
                    k = np.bincount(probs.argmax(axis=1), minlength=C)
                    kn = np.where(nucleated, k, 0)
                    n = int(kn.sum())
                    est = kn / n
                    low, high = exact_interval(kn, n)
                else:
                    point, reps = quantify(fitted[m], probs, seed=patient)
                    est = nucleated_shares(point, nucleated)
                    # the interval a sample reports (differential.py): the bootstrap's, widened to
                    # the exact one of counting its nucleated cells (--bootstrap-only: without)
                    n_nuc = int(np.isin(probs.argmax(axis=1), np.flatnonzero(nucleated)).sum())
                    low, high = (interval(nucleated_shares(reps, nucleated)) if args.bootstrap_only else
                                 interval_with_sampling(est, nucleated_shares(reps, nucleated), n_nuc))
                for c in np.flatnonzero(nucleated):
                    rows.append({"method": f"{m} [{tag}]" if tag and m != "cc" else m, "composition": name,
                                 "patient": patient, "class": labels[c],
                                 "estimate": 100 * est[c], "counted": 100 * counted_n[c],
                                 "marrow": 100 * marrow_n[c], "low": 100 * low[c], "high": 100 * high[c]})
    return rows


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(error=df["estimate"] - df["counted"],
                   covered=(df["low"] <= df["marrow"]) & (df["marrow"] <= df["high"]),
                   width=df["high"] - df["low"])
    out = []
    for m, g in df.groupby("method", sort=False):
        bias = g.groupby(["composition", "class"])["error"].mean()
        worst = bias.abs().idxmax()
        blasts = g[g["class"] == BLAST]
        blast_mae = blasts.groupby("composition")["error"].apply(lambda e: e.abs().mean())
        cov = g.groupby(["composition", "class"])["covered"].mean()
        out.append({
            "method": m,
            "MAE (pp)": g["error"].abs().mean(),
            "worst bias (pp)": f"{bias[worst]:+.1f} ({worst[1]} in {worst[0]})",
            "blast MAE (pp) mean / worst": f"{blast_mae.mean():.2f} / {blast_mae.max():.2f} ({blast_mae.idxmax()})",
            "coverage all / blast": f"{g['covered'].mean():.3f} / {blasts['covered'].mean():.3f}",
            "lowest coverage": f"{cov.min():.2f} ({cov.idxmin()[1]} in {cov.idxmin()[0]})",
            "median width (pp)": g["width"].median(),
        })
    return pd.DataFrame(out)


def per_composition(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(error=df["estimate"] - df["counted"],
                   covered=(df["low"] <= df["marrow"]) & (df["marrow"] <= df["high"]))
    blasts = df[df["class"] == BLAST]
    t = blasts.groupby(["composition", "method"], sort=False).agg(
        true_blast=("counted", "mean"), estimate=("estimate", "mean"),
        blast_MAE=("error", lambda e: e.abs().mean()), blast_coverage=("covered", "mean"))
    t["MAE_all"] = df.groupby(["composition", "method"], sort=False)["error"].apply(lambda e: e.abs().mean())
    t["coverage_min_class"] = df.groupby(["composition", "method", "class"], sort=False)["covered"].mean() \
        .groupby(["composition", "method"], sort=False).min()
    return t.round(3)


def stratified_halves(y: np.ndarray, seed: int) -> np.ndarray:
    """bool (n,): True for a seeded half of each class (the smaller half when odd).

    By class only: the Matek crops carry no slide or patient identifier, so a cut by source
    image is not possible on them."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        half[idx[: len(idx) // 2]] = True
    return half


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=Path, required=True,
                    help="the model's validation predictions (CSV), or its MODEL_DIR (the record run reads)")
    ap.add_argument("--views", type=int, choices=(1, 2, 4, 8),
                    help="with --val MODEL_DIR: the record for this many test-time views (classify.tta_views)")
    ap.add_argument("--test", type=Path, help="predictions on crops the model never saw (CSV)")
    ap.add_argument("--cross-fit", action="store_true", help="draw patients from one half of --val, "
                                                             "characterise on the other (method choice)")
    ap.add_argument("--split-test", action="store_true",
                    help="with --test: cut it in two stratified halves; patients drawn from one half are "
                         "estimated with the model characterised on the other half and, paired, on --val "
                         "(is a characterisation set that neither chose the epoch nor calibrated better?)")
    ap.add_argument("--drawn-characterisation", type=int, default=0, metavar="R",
                    help="with --test: R rounds in which the test crops are the population: the model is "
                         "characterised on crops drawn from them with replacement, with --val's class counts "
                         "times --characterisation-scale, and patients are drawn from them too (does the "
                         "interval cover when the characterisation set is a fair sample of the patients' cells?). "
                         "One record's error is shared by all its patients, so a class x composition coverage "
                         "rests on about R independent records: R = 10 puts its lowest of 72 near 0.7 by chance; "
                         "use R >= 200 (with --patients 3) for the lowest coverage")
    ap.add_argument("--characterisation-scale", type=float, default=1.0,
                    help="with --drawn-characterisation: characterisation set size relative to --val's")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--patients", type=int, default=100, help="patients per composition")
    ap.add_argument("--cells", type=int, default=500, help="nucleated cells per patient")
    ap.add_argument("--non-cell-percent", type=float, default=8.0)
    ap.add_argument("--concentration", type=float, default=200.0, help="Dirichlet concentration of a patient "
                                                                       "around the composition")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--bootstrap-only", action="store_true",
                    help="the bootstrap percentile interval alone, without widening it to the exact interval of "
                         "counting the sample's cells (what the report gave before)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write every row (CSV) and the summary (JSON) here")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    labels, y_val, p_val = read_predictions(args.val, args.views)
    t0 = time.perf_counter()
    if args.cross_fit:
        half = stratified_halves(y_val, args.seed)
        rows = []
        for k, (a, b) in enumerate(((half, ~half), (~half, half))):
            print(f"cross-fit {k + 1}/2: characterise on {a.sum()}, draw from {b.sum()} crops", flush=True)
            rows += evaluate_methods(methods, (y_val[a], p_val[a]), (y_val[b], p_val[b]), labels, args, k)
        source = f"cross-fit halves of {args.val}"
    else:
        if args.test is None:
            ap.error("give --test or --cross-fit")
        test_labels, y_test, p_test = read_predictions(args.test)
        if test_labels != labels:
            ap.error(f"{args.test} has classes {test_labels}, {args.val} {labels}")
        if args.drawn_characterisation:
            rows = []
            want = np.round(np.bincount(y_val, minlength=len(labels)) * args.characterisation_scale).astype(int)
            for k in range(args.drawn_characterisation):
                rng = np.random.default_rng([args.seed, 3, k])
                idx = np.concatenate([rng.choice(np.flatnonzero(y_test == c), size=n, replace=True)
                                      for c, n in enumerate(want) if n and np.any(y_test == c)])
                print(f"drawn characterisation {k + 1}/{args.drawn_characterisation}: {len(idx)} crops drawn from "
                      f"the {len(y_test)} test crops, patients from all of them", flush=True)
                rows += evaluate_methods(methods, (y_test[idx], p_test[idx]), (y_test, p_test), labels, args, k,
                                         tag="drawn", mix=y_val)
            source = (f"{args.test} as the population: characterised on {args.drawn_characterisation} draws of "
                      f"{int(want.sum())} of its crops, patients drawn from it")
        elif args.split_test:
            half = stratified_halves(y_test, args.seed)
            rows = []
            for k, (a, b) in enumerate(((half, ~half), (~half, half))):
                print(f"split-test {k + 1}/2: patients from {b.sum()} test crops; characterise on the other "
                      f"{a.sum()} test crops, then on the {len(y_val)} of --val", flush=True)
                rows += evaluate_methods(methods, (y_test[a], p_test[a]), (y_test[b], p_test[b]), labels, args,
                                         k, tag="test half", mix=y_val)
                rows += evaluate_methods([m for m in methods if m != "cc"], (y_val, p_val),
                                         (y_test[b], p_test[b]), labels, args, k, tag="val", mix=y_val)
            source = (f"patients from halves of {args.test}, model characterised on the other half "
                      f"[test half] or on {args.val} [val]")
        else:
            rows = evaluate_methods(methods, (y_val, p_val), (y_test, p_test), labels, args)
            source = f"patients from {args.test}, model characterised on {args.val}"
    df = pd.DataFrame(rows)
    summary = summarise(df)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(f"\n{source}; {args.patients} patients x {len(COMPOSITIONS) + 1} compositions, {args.cells} nucleated "
          f"cells each, {args.bootstrap} bootstrap replicates ({time.perf_counter() - t0:.0f} s)\n")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()
    print(per_composition(df).to_string())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "rows.csv", index=False)
        (args.out / "summary.json").write_text(json.dumps({"source": source, "args": vars(args) | {
            "val": str(args.val), "test": str(args.test), "out": str(args.out)},
            "summary": summary.to_dict(orient="records")}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
