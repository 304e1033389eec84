"""Segmentation quality on real and synthetic fields, and its time on the real 2048² field.

    python -m protloc.bench.segmentation [--before REV] [--out benchmarks/results/segmentation-real]
        [--overlays DIR] [--synthetic-samples 100] [--rounds 5]

- Real: the hand-checked nucleus centres of ``tests/fixtures/real-nuclei/points.json`` (how they
  were made: ``PROVENANCE.md`` beside it) on the real fields of ``../shared/real-hpa``. Per field:
  the reference count, the nuclei found, and the reference nuclei *matched*: a reference centre
  inside a found nucleus that holds no other reference centre (a merge of two misses both, a nucleus
  not found is missed; a split or a false object lowers precision, the found nuclei holding exactly
  one centre over all found).
- Synthetic: ``protloc synth``'s fields (seed 102, 100 fields of 256², the README's reporting set),
  drawn per index as ``protloc synth`` draws them: cells found, drawn, matched at IoU > 0.5 and the
  mean IoU of the matched.
- Time: ``segment`` of the real 2048² field, median of ``--rounds`` rounds.

``--before REV`` measures the ``segmentation.py`` of git revision REV beside the working tree's, in the
same run (rounds alternate, so load on a shared machine hits both alike).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("PROTLOC_SHARED", REPO.parent / "shared"))
REFERENCE = REPO / "tests" / "fixtures" / "real-nuclei" / "points.json"
MODULE = "src/protloc/cells/segmentation.py"


def load_reference(path: Path = REFERENCE) -> dict:
    """{field id: {"folder": relative to shared/, "points": [[y, x], ...] in the field's pixels, ...}}."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["fields"]


def field_image(field: dict, shared: Path = SHARED) -> np.ndarray:
    from protloc.data.formats import discover, read

    folder = shared / field["folder"]
    entries = [e for e in discover([folder]) if e.id == field["id"]]
    if not entries:
        raise FileNotFoundError(f"{field['id']} is not in {folder}")
    return read(entries[0]).image


def point_matching(nuclei: np.ndarray, points: np.ndarray) -> dict:
    """Reference centres against found nuclei: matched centres, found nuclei, precision."""
    ys = np.clip(points[:, 0].round().astype(int), 0, nuclei.shape[0] - 1)
    xs = np.clip(points[:, 1].round().astype(int), 0, nuclei.shape[1] - 1)
    hit = nuclei[ys, xs]
    per_nucleus = np.bincount(hit, minlength=int(nuclei.max()) + 1)
    matched = int(((hit > 0) & (per_nucleus[hit] == 1)).sum())
    found = int(len(np.unique(nuclei[nuclei > 0])))
    return {"reference": int(len(points)), "found": found, "matched": matched,
            "merged": int(((hit > 0) & (per_nucleus[hit] > 1)).sum()), "missed": int((hit == 0).sum()),
            "precision": matched / found if found else float("nan")}


def real_figures(segment, fields: dict, shared: Path = SHARED) -> dict:
    rows = {}
    for name, field in fields.items():
        image = field_image(field, shared)
        result = segment(image)
        row = point_matching(result.nuclei, np.asarray(field["points"], dtype=float))
        row["cells"] = result.count
        row["set"] = field.get("set", "")
        rows[name] = row
    totals = {"all": _total(rows.values())}
    for subset in sorted({r["set"] for r in rows.values()} - {""}):
        totals[subset] = _total([r for r in rows.values() if r["set"] == subset])
    return {"fields": rows, "total": totals["all"], "totals": totals}


def _total(rows) -> dict:
    rows = list(rows)
    total = {key: sum(r[key] for r in rows) for key in ("reference", "found", "matched", "merged", "missed")}
    total["fields"] = len(rows)
    total["matched_fraction"] = total["matched"] / max(total["reference"], 1)
    total["precision"] = total["matched"] / max(total["found"], 1)
    total["mean_count_error"] = float(np.mean([abs(r["found"] - r["reference"]) / r["reference"] for r in rows]))
    return total


def synthetic_figures(segment, seed: int = 102, samples: int = 100, size: int = 256) -> dict:
    from protloc.cells.evaluate import match_cells
    from protloc.data.synth.dataset import draw_field

    drawn = found = matched = 0
    ious = []
    for index in range(samples):
        _, field = draw_field(seed, index, size, size)
        matching = match_cells(field.cell_mask.astype(np.int32), segment(field.image.astype(np.float32)).cells)
        drawn, found, matched = drawn + matching.true_count, found + matching.found_count, matched + len(matching.ious)
        ious.extend(matching.ious.tolist())
    return {"seed": seed, "samples": samples, "size": size, "drawn": drawn, "found": found, "matched": matched,
            "matched_fraction": matched / max(drawn, 1), "mean_iou": float(np.mean(ious)) if ious else float("nan")}


def module_at(revision: str | None):
    """The segmentation module of the working tree (None) or of a git revision, loaded apart."""
    if revision is None:
        from protloc.cells import segmentation

        return segmentation
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{MODULE}"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"segmentation_{revision}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"protloc_segmentation_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timing(modules: dict, image: np.ndarray, rounds: int) -> dict:
    times = {name: [] for name in modules}
    for _ in range(rounds):
        for name, module in modules.items():
            start = time.perf_counter()
            module.segment(image)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def write_overlays(modules: dict, fields: dict, out: Path, shared: Path = SHARED) -> list[str]:
    """One PNG per field: each version's nucleus (cyan) and cell (white) outlines over the composite,
    reference centres as yellow dots, side by side."""
    from skimage.segmentation import find_boundaries

    from protloc.visualization import composite, save_png

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, field in fields.items():
        image = field_image(field, shared)
        panels = []
        for module in modules.values():
            result = module.segment(image)
            rgb = composite(image, dim=1.0)
            thick = max(1, image.shape[1] // 700)
            for labels, colour in ((result.cells, (255, 255, 255)), (result.nuclei, (0, 255, 255))):
                edges = find_boundaries(labels, mode="inner")
                if thick > 1:
                    from scipy import ndimage as ndi

                    edges = ndi.binary_dilation(edges, iterations=thick - 1)
                rgb[edges] = colour
            for y, x in np.asarray(field["points"], dtype=int):
                r = max(2, image.shape[1] // 256)
                rgb[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = (255, 220, 0)
            panels.append(rgb)
        gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
        joined = panels[0]
        for panel in panels[1:]:
            joined = np.concatenate([joined, gap, panel], axis=1)
        written.append(str(save_png(out / f"{name}.png", joined)))
    return written


def _panel(image: np.ndarray, result, points, box, step: int, zoom: int) -> np.ndarray:
    """RGB of ``image[box]`` every ``step`` px, zoomed ``zoom`` times: cell outlines white, nuclei
    cyan, reference centres yellow."""
    from skimage.segmentation import find_boundaries

    from protloc.visualization import composite

    ys, xs = box
    rgb = composite(image[:, ys, xs][:, ::step, ::step], dim=1.0)
    cells, nuclei = result.cells[ys, xs][::step, ::step], result.nuclei[ys, xs][::step, ::step]
    rgb = np.kron(rgb, np.ones((zoom, zoom, 1), np.uint8))
    for labels, colour in ((cells, (255, 255, 255)), (nuclei, (0, 255, 255))):
        edges = np.kron(find_boundaries(labels, mode="inner"), np.ones((zoom, zoom), bool))
        rgb[edges] = colour
    for y, x in np.asarray(points, dtype=int):
        y, x = (y - ys.start) // step * zoom, (x - xs.start) // step * zoom
        if 0 <= y < rgb.shape[0] and 0 <= x < rgb.shape[1]:
            rgb[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = (255, 220, 0)
    return rgb


def before_after_figure(before, after, fields: dict, out: Path, shared: Path = SHARED) -> Path:
    """docs/segmentation-real-before-after.png: the real 2048² field (whole, at a quarter) and a
    crowded quarter of Kaggle field 4758031e (zoomed twice), each before | after."""
    from PIL import Image, ImageDraw

    rows = []
    for name, box, step, zoom in (("57639_1283_B2_10", (slice(0, 2048), slice(0, 2048)), 4, 1),
                                  ("4758031e", (slice(150, 406), slice(120, 376)), 1, 2)):
        field = fields[name]
        image = field_image(field, shared)
        panels = [_panel(image, module.segment(image), field["points"], box, step, zoom) for module in (before, after)]
        rows.append(np.concatenate([panels[0], np.full((panels[0].shape[0], 6, 3), 255, np.uint8), panels[1]], axis=1))
    picture = Image.fromarray(np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]]))
    draw = ImageDraw.Draw(picture)
    for x, text in ((8, "before"), (picture.width // 2 + 8, "after")):
        draw.rectangle([x - 4, 4, x + 60, 24], fill=(0, 0, 0))
        draw.text((x, 8), text, fill=(255, 255, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=128).save(out, optimize=True)  # a palette keeps the PNG small
    return out


def to_markdown(result: dict) -> str:
    names = list(result["versions"])
    lines = ["# Segmentation on real and synthetic fields", "",
             f"Command: `{result['command']}`; machine load (1-minute load average, 2 cores) {result['load']:.1f}.", "",
             "## Real fields: hand-checked nucleus centres", "",
             f"Reference: `{result['reference']}` ({result['reference_fields']} fields, "
             f"{result['versions'][names[0]]['real']['total']['reference']} nuclei; how it was made: PROVENANCE.md beside it). "
             "Matched: a reference centre inside a found nucleus holding no other centre.", "",
             "| field | set | reference | " + " | ".join(f"{n}: found / matched / merged / missed" for n in names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    first = result["versions"][names[0]]["real"]["fields"]
    for field in first:
        cells = [result["versions"][n]["real"]["fields"][field] for n in names]
        lines.append(f"| {field} | {cells[0]['set']} | {cells[0]['reference']} | "
                     + " | ".join(f"{c['found']} / {c['matched']} / {c['merged']} / {c['missed']}" for c in cells) + " |")
    lines += ["", "| fields | version | matched fraction (recall) | precision | mean abs. count error per field |",
              "|---|---|---:|---:|---:|"]
    for subset in result["versions"][names[0]]["real"]["totals"]:
        for n in names:
            t = result["versions"][n]["real"]["totals"][subset]
            lines.append(f"| {subset} ({t['fields']}) | {n} | {t['matched_fraction']:.3f} ({t['matched']}/{t['reference']}) | "
                         f"{t['precision']:.3f} ({t['matched']}/{t['found']}) | {t['mean_count_error']:.3f} |")
    synth = result["versions"][names[0]].get("synthetic")
    if synth:
        lines += ["", f"## Synthetic: `protloc synth` seed {synth['seed']}, {synth['samples']} fields of {synth['size']}²", "",
                  "| version | drawn | found | matched at IoU > 0.5 | mean IoU of matched |", "|---|---:|---:|---:|---:|"]
        for n in names:
            s = result["versions"][n]["synthetic"]
            lines.append(f"| {n} | {s['drawn']} | {s['found']} | {s['matched']} ({s['matched_fraction']:.3f}) | {s['mean_iou']:.3f} |")
    lines += ["", f"## Time: `segment` of the real 2048² field ({result['timing_rounds']} rounds, median)", "",
              "| version | seconds | cells |", "|---|---:|---:|"]
    for n in names:
        v = result["versions"][n]
        lines.append(f"| {n} | {v['seconds_2048']:.3f} | {v['cells_2048']} |")
    return "\n".join(lines) + "\n"


def run(before: str | None = None, samples: int = 100, rounds: int = 5, overlays: Path | None = None,
        reference: Path = REFERENCE, shared: Path = SHARED, figure: Path | None = None) -> dict:
    modules = {}
    if before:
        modules[f"before ({before})"] = module_at(before)
    modules["now"] = module_at(None)
    fields = load_reference(reference)
    big = field_image({"id": "57639_1283_B2_10", "folder": "real-hpa/hpa-download"}, shared)
    seconds = timing(modules, big, rounds)
    versions = {}
    for name, module in modules.items():
        versions[name] = {"real": real_figures(module.segment, fields, shared),
                          "seconds_2048": seconds[name], "cells_2048": module.segment(big).count}
        if samples:
            versions[name]["synthetic"] = synthetic_figures(module.segment, samples=samples)
    from protloc.bench.common import machine_info

    result = {"machine": machine_info(), "versions": versions, "reference": str(Path(reference).relative_to(REPO)) if Path(reference).is_relative_to(REPO) else str(reference),
              "reference_fields": len(fields), "timing_rounds": rounds, "load": os.getloadavg()[0],
              "command": "python -m protloc.bench.segmentation " + " ".join(sys.argv[1:])}
    if overlays:
        result["overlays"] = write_overlays(modules, fields, Path(overlays), shared)
    if figure and before:
        result["figure"] = str(before_after_figure(modules[f"before ({before})"], modules["now"], fields, Path(figure), shared))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="git revision whose segmentation.py is measured beside the working tree's")
    parser.add_argument("--synthetic-samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--overlays", type=Path, help="write before/after overlays of the reference fields here")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--figure", type=Path, help="with --before: write the before/after figure here "
                        "(docs/segmentation-real-before-after.png)")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if not (SHARED / "real-hpa").is_dir():
        print(f"error: {SHARED / 'real-hpa'} not found (set PROTLOC_SHARED)", file=sys.stderr)
        return 2
    result = run(args.before, args.synthetic_samples, args.rounds, args.overlays, args.reference, figure=args.figure)
    text = to_markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
