"""detect_tile / detect_source / detect_sample on synthetic slides and fields with truth, and real fields."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slideproc.config import RunConfig, with_overrides
from slideproc.detect import detect_sample, detect_source, detect_tile, plan_source
from slideproc.detection_eval import match_points, score_tables
from slideproc.schema import DETECT_COLUMNS
from slideproc.sources.base import SourceRef
from slideproc.sources.discover import discover
from smear import render


def fresh_seed() -> int:
    """A seed nobody tuned on: new each run unless SLIDEPROC_TEST_SEED pins it."""
    env = os.environ.get("SLIDEPROC_TEST_SEED")
    return int(env) if env else int.from_bytes(os.urandom(3), "little")


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    from slideproc.synthetic.archive import write_archive

    seed = fresh_seed()
    out = tmp_path_factory.mktemp("synth")
    write_archive(out, samples=1, cells=120, kind="slide", seed=seed, size=(3072, 3072))
    slide = next((out / "slides").glob("*.tif*"))
    truth = pd.read_csv(out / "truth.csv", dtype={"sample_id": str})
    return seed, slide, truth


def _ref(path: Path, kind: str = "openslide", mpp=None) -> SourceRef:
    return SourceRef(str(path), path.name, kind, mpp)


def _cfg(tile: int = 1024, **seg) -> RunConfig:
    cfg = RunConfig()
    return replace(cfg, tiling=replace(cfg.tiling, tile_size_px=tile), segment=replace(cfg.segment, **seg))


def test_synthetic_slide_scored_against_truth(synth_slide):
    seed, slide, truth = synth_slide
    df = detect_source(_ref(slide), _cfg())
    assert list(df.columns) == list(DETECT_COLUMNS)
    assert set(df["source"]) == {slide.name}
    truth = truth[truth["source"] == slide.name]
    s = score_tables(truth.assign(sample_id="s"), df.assign(sample_id="s"), 0.25, 4.0).iloc[-1]
    # Issue-3 target is 0.98 on full-size slides (benchmarks/README); a 3k slide
    # with ~120 cells leaves room for one or two hard cells.
    assert s["recall"] >= 0.95 and s["precision"] >= 0.95, f"seed {seed}: {s.to_dict()}"


def test_tile_size_invariance_and_no_duplicates(synth_slide):
    seed, slide, _ = synth_slide
    ref = _ref(slide)
    a = detect_source(ref, _cfg(512))
    b = detect_source(ref, _cfg(2048))
    assert len(a) == len(b), f"seed {seed}"
    pa, pb = a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy()
    m = match_points(pa, pb, 1.0)  # level-0 px
    assert len(m) == len(a), f"seed {seed}: {len(a) - len(m)} cells differ by > 1 px"
    # No cell twice (along seams or anywhere): centres are a nucleus apart.
    for df in (a, b):
        pts = df[["x", "y"]].to_numpy() * 0.25
        d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert d.min() > 2.0


def test_detect_tile_keeps_only_cells_its_core_owns(synth_slide):
    _, slide, _ = synth_slide
    ref, cfg = _ref(slide), _cfg(512)
    geo, tiles = plan_source(ref, cfg)
    assert len(tiles) > 4
    for t in tiles[:6]:
        df = detect_tile(ref, t, geo, cfg)
        ux = (df["x"].to_numpy() + 0.5) / geo.f - 0.5
        uy = (df["y"].to_numpy() + 0.5) / geo.f - 0.5
        assert np.all(t.owns(ux, uy))
        assert np.all((df.x0 <= df.x) & (df.x < df.x1) & (df.y0 <= df.y) & (df.y < df.y1))


def _write_field(path: Path, img: np.ndarray) -> Path:
    Image.fromarray(img).save(path)
    return path


def test_edge_cells_of_an_image_field(tmp_path):
    # Cells cut by the field's edges: centred 1.5 um inside the left and top
    # edges and in the bottom-right corner.
    cells = [(1.5, 30.0, "lym"), (40.0, 1.5, "blast"), (78.5, 58.5, "lym"), (40.0, 30.0, "ngs")]
    f = _write_field(tmp_path / "edge.png", render(80, 60, 0.25, cells))
    df = detect_source(_ref(f, "image", 0.25), RunConfig())
    truth = np.array([(x, y) for x, y, _ in cells])
    got = (df[["x", "y"]].to_numpy() + 0.5) * 0.25
    m = match_points(truth, got, 3.0)
    assert len(df) == len(cells) and len(m) == len(cells), got


def test_cell_free_field_gives_empty_table(tmp_path):
    rng = np.random.default_rng(5)
    img = render(120, 90, 0.25, rbcs=map(tuple, rng.uniform(4, 116, (80, 2))),
                 platelets=map(tuple, rng.uniform(4, 116, (20, 2)) * [1, 0.75]))
    f = _write_field(tmp_path / "rbc_only.png", img)
    df = detect_source(_ref(f, "image", 0.25), RunConfig())
    assert len(df) == 0 and list(df.columns) == list(DETECT_COLUMNS)


def test_all_background_slide_has_no_tiles_and_no_cells(tmp_path):
    from slideproc.synthetic.tiff_writer import write_pyramid

    path = tmp_path / "glass.tiff"
    write_pyramid(path, 4096, 3072, 0.25, lambda x0, y0, w, h, d: np.full((h, w, 3), 243, np.uint8))
    ref = _ref(path)
    geo, tiles = plan_source(ref, RunConfig())
    assert tiles == []
    df = detect_source(ref, RunConfig())
    assert len(df) == 0 and list(df.columns) == list(DETECT_COLUMNS)


def test_detect_sample_over_an_image_folder(tmp_path):
    folder = tmp_path / "sample_a"
    folder.mkdir()
    a = [(20.0, 20.0, "lym"), (50.0, 25.0, "blast")]
    b = [(30.0, 30.0, "ngs")]
    _write_field(folder / "f1.png", render(80, 60, 0.25, a))
    _write_field(folder / "f2.png", render(80, 60, 0.25, b))
    (sample,) = discover([folder]).samples
    cfg = with_overrides(RunConfig(), {"source.fallback_mpp_um": 0.25})
    df = detect_sample(sample, cfg)
    assert sorted(df["source"].value_counts().items()) == [("f1.png", 2), ("f2.png", 1)]
    # Coordinates are pixels of that image (0.25 um/px).
    f2 = df[df["source"] == "f2.png"].iloc[0]
    assert abs(f2.x * 0.25 - 30.0) < 2 and abs(f2.y * 0.25 - 30.0) < 2


def test_missing_mpp_is_a_clear_error(tmp_path):
    from slideproc.errors import MissingMppError

    f = _write_field(tmp_path / "nompp.png", render(40, 40, 0.25, [(20, 20, "lym")]))
    with pytest.raises(MissingMppError, match="nompp.png"):
        detect_source(_ref(f, "image"), RunConfig())


# ----------------------------------------------------------------------------
# real fields
# ----------------------------------------------------------------------------
BCCD_MPP = 0.069  # red cells 7.5 um: median longer side of the 351 RBC boxes off the edge = 109 px


def _boxes(xml: Path):
    out = []
    for o in ET.parse(xml).findall("object"):
        b = o.find("bndbox")
        out.append((o.find("name").text, *[float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]))
    return out


def bccd_scores(bccd_dir: Path, limit: int | None = None) -> dict:
    from slideproc.detection_eval import box_hits

    cfg = with_overrides(RunConfig(), {"source.fallback_mpp_um": BCCD_MPP})
    tot = {"WBC": [0, 0], "RBC": [0, 0], "Platelet": [0, 0]}
    for xml in sorted((bccd_dir / "Annotations").glob("*.xml"))[:limit]:
        img = bccd_dir / "JPEGImages" / (xml.stem + ".jpg")
        df = detect_source(_ref(img, "image"), cfg)
        boxes = _boxes(xml)
        classes = np.array([{"Platelets": "Platelet"}.get(b[0], b[0]) for b in boxes])
        for c, (k, n) in box_hits(df[["x", "y"]].to_numpy(), np.array([b[1:] for b in boxes]), classes).items():
            tot[c][0] += k
            tot[c][1] += n
    (wbc_hit, wbc), (rbc_fp, rbc), (plt_fp, plt) = tot["WBC"], tot["RBC"], tot["Platelet"]
    return {"wbc_recall": wbc_hit / max(wbc, 1), "rbc_fp": rbc_fp / max(rbc, 1),
            "platelet_fp": plt_fp / max(plt, 1), "n_wbc": wbc, "n_rbc": rbc, "n_platelet": plt}


def test_real_bccd_fields(bccd_dir):
    s = bccd_scores(bccd_dir)
    assert s["wbc_recall"] >= 0.95, s
    assert s["rbc_fp"] <= 0.05 and s["platelet_fp"] <= 0.10, s


def txl_scores(txl_dir: Path, per_source: int, cfg: RunConfig | None = None) -> dict:
    """Box hits per TXL-PBC source on the first ``per_source`` val fields of
    each (mpp from each field's red-cell boxes, as benchmarks/bench_txl.py)."""
    from slideproc.detection_eval import box_hits, box_mpp, read_yolo_boxes, txl_source

    tot: dict = {}
    seen: dict = {}
    for img in sorted((txl_dir / "images" / "val").glob("*.jpg")):
        with Image.open(img) as im:
            w, h = im.size
        src = txl_source((w, h))
        if seen.get(src, 0) >= per_source:
            continue
        boxes, classes = read_yolo_boxes(txl_dir / "labels" / "val" / (img.stem + ".txt"), w, h)
        mpp = box_mpp(boxes, classes, w, h)
        if mpp is None:
            continue
        seen[src] = seen.get(src, 0) + 1
        df = detect_source(SourceRef(str(img), img.name, "image", mpp), cfg or RunConfig())
        for c, (k, n) in box_hits(df[["x", "y"]].to_numpy(), boxes, classes).items():
            a = tot.setdefault(src, {}).setdefault(c, [0, 0])
            a[0] += k
            a[1] += n
    return tot


def test_real_txl_pbc_fields_of_four_stains(txl_dir):
    """Four microscopes, cameras and stains (TXL-PBC val split, 12 fields each)
    with the default config. Raabin's red cells are grey-violet and BCD's
    neutrophil nuclei magenta: on OD_R - 0.5 OD_B (configs/od-red-channel.yaml,
    the default before issue 15) 68 of Raabin's 155 red cells here held a false
    detection and 3 of 13 WBC were missed, and 2 of BCD's 12; with the default
    7 and 1, and 1. The bounds are looser than the targets (12 fields are few);
    the whole val split: BENCHMARKS.md."""
    tot = txl_scores(txl_dir, 12)
    assert set(tot) == {"BCCD", "BCD", "PBC", "Raabin"}
    for src, s in tot.items():
        (wk, wn), (rk, rn), (pk, pn) = s["WBC"], s["RBC"], s["Platelet"]
        assert wn > 5 and rn > 50, (src, s)
        assert wk >= 0.9 * wn and rk <= 0.1 * rn and pk <= max(1, 0.1 * pn), (src, s)
    # The former channel is kept for H&E; on grey-violet red cells it fails, as measured.
    from slideproc.config import load_run_config

    red = txl_scores(txl_dir, 12, load_run_config(Path(__file__).parents[1] / "configs" / "od-red-channel.yaml"))
    assert red["Raabin"]["RBC"][0] > 0.3 * red["Raabin"]["RBC"][1], red["Raabin"]


def he_scores(bm_he_dir: Path, mpp: float = 0.35) -> pd.DataFrame:
    cfg = with_overrides(RunConfig(), {"source.fallback_mpp_um": mpp})
    truth, det = [], []
    for png in sorted(bm_he_dir.glob("BM_GRAZ_HE_*_01.png")):
        dots = np.loadtxt(png.with_name(png.stem + "_dots.txt"))
        truth.append(pd.DataFrame({"sample_id": "he", "source": png.name, "x": dots[:, 0], "y": dots[:, 1]}))
        det.append(detect_source(_ref(png, "image"), cfg).assign(sample_id="he"))
    return score_tables(pd.concat(truth), pd.concat(det), mpp, 4.0)


def test_real_bone_marrow_he_fields_no_silent_zero(bm_he_dir):
    s = he_scores(bm_he_dir).iloc[-1]
    # Another stain (H&E histology): no target, but real detections that match.
    assert s["n_detected"] > 100 and s["f1"] > 0.3, s.to_dict()


# ----------------------------------------------------------------------------
# full-size checks of the issue-3 targets (make test-slow)
# ----------------------------------------------------------------------------
@pytest.mark.slow
def test_synthetic_archive_targets_fresh_seed(tmp_path):
    """Procedural smears (2 slides 4096^2 + 2 folders, 300 cells each), a seed
    nobody tuned on: recall and precision >= 0.98 at <= 4 um (measured 0.984-0.991 /
    0.985-0.992 on seeds 777, 31337, 2027, 9999 with the default since issue 15, whose
    platelet rules were chosen on seeds 101, 202, 303, 404, 4242; 0.97 here leaves room for a hard seed)."""
    from slideproc.cli import main
    from slideproc.detection_eval import score_output

    seed = fresh_seed()
    arch, out = tmp_path / "a", tmp_path / "out"
    assert main(["-q", "synth", str(arch), "--samples", "2", "--cells", "300", "--seed", str(seed)]) == 0
    assert main(["-q", "detect", str(arch / "slides"), str(arch / "manifest.csv"), "--out", str(out)]) == 0
    s = score_output(out, arch / "truth.csv", 4.0).set_index("sample_id").loc["overall"]
    assert s["recall"] >= 0.97 and s["precision"] >= 0.97, f"seed {seed}: {s.to_dict()}"


@pytest.mark.slow
def test_real_matek_every_crop(matek_dir):
    """Every crop as a field at 0.095 um/px: a detection within 5 um of the centre.
    Target 0.97; on the 1,126 developer crops (BENCHMARKS.md) 0.934 (1,052; the
    channel before issue 15 1,053; 0.931 before the pale-level pass and the
    rim rule). About 29 of the 74 misses have no nucleated cell centred within 5 um
    of the crop centre (20 NIF crops centred on glass, red cells or debris; cells cut
    by the border), which caps any detector near 0.974. The rest: bilobed eosinophils
    split in two (lobes span 13-15 um with a 1-1.5 um gap, as touching neighbours'
    nuclei do here), nuclei hidden in granular cytoplasm, eccentric nuclei."""
    cfg = with_overrides(RunConfig(), {"source.fallback_mpp_um": 0.095})
    hits = []
    for f in sorted(matek_dir.glob("*/*.jpg")):
        df = detect_source(_ref(f, "image"), cfg)
        d = np.hypot(df.x - 124.5, df.y - 124.5) * 0.095 if len(df) else np.array([np.inf])
        hits.append(d.min() <= 5.0)
    assert len(hits) > 1000
    assert np.mean(hits) >= 0.925
