"""Per-cell answers on real cells: mosaics tiled from real labelled fields (``protloc.bench.mosaics``).

    protloc bench --sections cells-real --data ../shared/real-hpa/kaggle2018-train-101 [--model pretrained]
    python -m protloc.bench.cells_real --data DIR [--model pretrained] [--mosaics 48] [--seed 0] \
        [--masks DIR] [--precision bf16] [--out benchmarks/results/cells-real]

Each mosaic (2x2 and 3x3, fields of pairwise different label sets, seeded) goes through the per-cell
path as a user's field would: protloc's segmentation (or the reader's masks of each source field,
``--masks``), then every cell's evidence from one forward pass. Each cell's truth is its source
field's labels (mapped onto the model's classes); cells within ``margin`` px of a seam are left out.
Reported for every per-cell answer (``ANSWERS``), on the report half of the mosaics (the selection
half chose the default; ``protloc.bench.cells_real_report``):

- per-cell accuracy: the cell's top class is among its source field's labels;
- per-cell mAP: per class, the cells ranked by that class's probability (average precision), the
  mean over the classes present (the HPA single-cell challenge's metric);
- per mosaic, the number of distinct top classes its cells get, and how many mosaics give one
  answer to every cell although their tiles' labels differ;
- the image-level ceiling: every source field predicted alone (``protloc predict``'s answer), its
  answer given to its cells.

Also each cell predicted alone (``alone``): a window of ``ALONE_WINDOW`` px at the model's pixel size
centred on the cell, everything outside the cell set to the slide's background level, through the
network on its own (what ``protloc.cells.features.crop_probabilities`` does for the other networks),
against the masked pooling of the shared pass (``own``), and their geometric mean.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
REAL_DATA = Path(os.environ.get("PROTLOC_SHARED", REPO.parent / "shared")) / "real-hpa" / "kaggle2018-train-101"
ALONE_WINDOW = 512  # px at the model's pixel size (41 µm at 0.08 µm/px: a cell and its surroundings)
MARGIN = 4
# Two 2x2 mosaics for every 3x3 one (a 3x3 mosaic is a 6144² pass at the model's pixel size), and
# each cell alone on the 2x2 mosaics among the first ALONE_MOSAICS only (a network pass per cell):
# the machine time of the benchmark, not a choice of method.
GRIDS = (2, 2, 3)
ALONE_GRIDS = (2,)
ALONE_MOSAICS = 12


def _crops_alone(predictor, image: np.ndarray, cells: np.ndarray, cell_ids, scale: float,
                 window: int = ALONE_WINDOW, batch: int = 8) -> np.ndarray:
    """Each cell alone through the network [n, classes] (module docstring). The window is cut on the
    input's grid (``window / scale`` px) and brought to the model's pixel size as the image would be."""
    import torch

    from protloc.cells.features import background_level, cell_crop
    from protloc.data.pixel_size import rescale
    from protloc.inference.gapnet_pl_fast import fast_network

    fill = background_level(image, cells)
    side = max(1, int(round(window / scale)))
    network = fast_network(predictor.network, precision="fp32") or predictor.network
    out = []
    with torch.no_grad():
        for start in range(0, len(cell_ids), batch):
            crops = [cell_crop(image, cells, int(i), side, fill) for i in cell_ids[start : start + batch]]
            crops = np.stack([c if scale == 1.0 else rescale(c, window / side) for c in crops]).astype(np.float32)
            out.append(torch.sigmoid(network(torch.from_numpy(crops))).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(predictor.classes)), np.float32)


def collect(data, model="pretrained", count: int = 48, seed: int = 0, margin: int = MARGIN, masks=None,
            alone: bool = True, progress: bool = False, shard: tuple[int, int] = (0, 1),
            grids=GRIDS, alone_grids=ALONE_GRIDS, evidence: Path | None = None) -> dict:
    """Every mosaic's kept cells and their evidence (arrays, one row per cell) plus the arrangement.
    ``shard`` (k, n): only the mosaics whose number is k modulo n (``merge`` joins the shards).
    ``evidence``: saved there after every mosaic (an interrupted run keeps the mosaics it finished)."""
    from protloc.bench.cells_real_report import save_evidence

    from tqdm.auto import tqdm

    from protloc.cells.features import predict_cells
    from protloc.cells.masks import read_masks
    from protloc.bench.mosaics import arrange_mosaics, build_mosaic, cell_tiles, list_fields, tile_labels
    from protloc.cells.segmentation import segment
    from protloc.inference import load_model

    predictor = model if hasattr(model, "network") else load_model(model)
    classes = list(predictor.classes)
    index, fields, skipped = list_fields(data, classes)
    by_id = {f.id: f for f in fields}
    mosaics = arrange_mosaics(fields, count, seed, grids=grids)
    pixel_size = fields[0].pixel_size_um
    rows: dict[str, list] = {k: [] for k in ("truth", "own", "image", "tile", "alone", "expression",
                                             "signal_to_noise", "mosaic", "tile_index", "cell_id")}
    tile_answer: dict[str, np.ndarray] = {}
    seconds = {"segmentation": 0.0, "cells": 0.0, "alone": 0.0, "tiles": 0.0}
    for number, mosaic in enumerate(tqdm(mosaics, desc="mosaics", unit="mosaic", disable=not progress)):
        if number % shard[1] != shard[0]:
            continue
        grid, tiles = mosaic["grid"], mosaic["tiles"]
        image = build_mosaic([index.load_image(t) for t in tiles], grid)
        start = time.perf_counter()
        if masks is not None:
            cells = tile_labels([read_masks(masks, t, by_id[t].shape)[0] for t in tiles], grid)
        else:
            cells = segment(image).cells
        seconds["segmentation"] += time.perf_counter() - start
        start = time.perf_counter()
        predictions = predict_cells(predictor, image, cells, pixel_size_um=pixel_size)
        seconds["cells"] += time.perf_counter() - start
        ids = predictions.cell_ids
        where = cell_tiles(cells, ids, predictions.boxes, grid, margin)
        kept = where >= 0
        mosaic.update(cells=int(len(ids)), kept=int(kept.sum()))
        start = time.perf_counter()
        if alone and kept.any() and grid in alone_grids and number < ALONE_MOSAICS:
            by_alone = _crops_alone(predictor, image, cells, ids[kept], predictions.scale)
        else:
            by_alone = np.full((int(kept.sum()), len(classes)), np.nan, np.float32)
        seconds["alone"] += time.perf_counter() - start
        start = time.perf_counter()
        for t in tiles:
            if t not in tile_answer and mosaic["half"] == "report":
                tile_answer[t] = predictor.predict_proba(index.load_image(t), pixel_size_um=pixel_size)
        seconds["tiles"] += time.perf_counter() - start
        for k in np.flatnonzero(kept):
            tile = tiles[where[k]]
            truth = np.zeros(len(classes), np.int8)
            truth[[classes.index(c) for c in by_id[tile].labels]] = 1
            rows["truth"].append(truth)
            rows["own"].append(predictions.probabilities[k])
            rows["image"].append(predictions.image_probabilities)
            rows["tile"].append(tile_answer.get(tile, np.full(len(classes), np.nan, np.float32)))
            rows["expression"].append(predictions.expression[k])
            rows["signal_to_noise"].append(predictions.signal_to_noise[k])
            rows["mosaic"].append(number)
            rows["tile_index"].append(where[k])
            rows["cell_id"].append(int(ids[k]))
        rows["alone"].extend(list(by_alone))
        if evidence is not None:
            save_evidence(evidence, _result(rows, mosaics, classes, predictor, model, pixel_size, fields, skipped,
                                            seed, margin, seconds, masks, data))
        if not progress:
            print(f"{mosaic['id']}: {mosaic['kept']} of {mosaic['cells']} cells kept ({sum(seconds.values()):.0f} s)",
                  file=sys.stderr, flush=True)
    return _result(rows, mosaics, classes, predictor, model, pixel_size, fields, skipped, seed, margin, seconds,
                   masks, data)


def _result(rows, mosaics, classes, predictor, model, pixel_size, fields, skipped, seed, margin, seconds, masks,
            data) -> dict:
    arrays = {k: np.array(v) for k, v in rows.items()}
    return {"arrays": arrays, "mosaics": mosaics, "classes": classes, "model": getattr(predictor, "name", str(model)),
            "thresholds": np.asarray(predictor.thresholds).tolist(), "pixel_size_um": pixel_size,
            "fields": len(fields), "skipped": skipped, "seed": seed, "margin": margin, "seconds": dict(seconds),
            "masks": str(masks) if masks else "protloc's segmentation", "data": str(data)}


def merge(parts: list[dict]) -> dict:
    """Shards of ``collect`` (same arrangement) joined into one."""
    merged = dict(parts[0])
    merged["arrays"] = {k: np.concatenate([p["arrays"][k] for p in parts if len(p["arrays"][k])])
                        for k in parts[0]["arrays"]}
    merged["mosaics"] = [next((p["mosaics"][k] for p in parts if "kept" in p["mosaics"][k]), m)
                         for k, m in enumerate(parts[0]["mosaics"])]
    merged["seconds"] = {k: sum(p["seconds"][k] for p in parts) for k in parts[0]["seconds"]}
    return merged


def cells_real_section(settings, progress) -> dict:
    """``protloc bench --sections cells-real [--data DIR]``: 8 mosaics with --quick, else 48; the
    figure and the arrangement beside the results file."""
    from protloc.bench.cells_real_report import report, section
    from protloc.errors import ProtlocError

    data = Path(settings.data) if settings.data else REAL_DATA
    if not data.is_dir():
        raise ProtlocError(f"cells-real needs labelled real fields: --data DIR (no {data})")
    model = settings.model or "pretrained"
    collected = collect(data, model, 8 if settings.quick else 48, progress=settings.progress)
    collected["command"] = "protloc bench --sections cells-real"
    result = report(collected)
    out = Path(settings.out or "bench-results.json")
    progress.step("cells-real")
    return section(collected, result, out.with_name(out.stem + "-cells-real"), model)


def main(argv: list[str] | None = None) -> int:
    from protloc.bench.cells_real_report import load_evidence, report, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="labelled real fields (Kaggle 2018 layout)")
    parser.add_argument("--model", default="pretrained")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="of GapNet-PL's pass on the CPU (int8 has no feature maps for the cells)")
    parser.add_argument("--mosaics", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=int, default=MARGIN, help="px: cells this close to a seam are left out")
    parser.add_argument("--masks", type=Path, help="the source fields' <id>_cellmask images (default: segment)")
    parser.add_argument("--no-alone", action="store_true", help="skip each cell predicted alone (faster)")
    parser.add_argument("--evidence", type=Path, help="also write the per-cell evidence to this .npz")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cells-real")
    parser.add_argument("--shard", default="0/1", help="K/N: only mosaics K mod N, and only --evidence written")
    parser.add_argument("--from-evidence", type=Path, nargs="+", metavar="NPZ",
                        help="report from saved evidence (shards joined) instead of collecting")
    args = parser.parse_args(argv)
    if args.from_evidence:
        collected = merge([load_evidence(path) for path in args.from_evidence])
    else:
        from protloc.inference import load_model

        k, n = (int(v) for v in args.shard.split("/"))
        predictor = load_model(args.model, precision=args.precision)
        collected = collect(args.data, predictor, args.mosaics, args.seed, args.margin, args.masks,
                            alone=not args.no_alone, progress=sys.stderr.isatty(), shard=(k, n),
                            evidence=args.evidence)
        if n > 1:
            return 0
    result = report(collected)
    write_results(args.out, result, collected, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
