"""The downloads: results as CSV (one row per submission, and one per cell where the cells are
listed), and a batch's results as a zip (that CSV and the cells' label images).

Every text cell is spreadsheet-safe: a spreadsheet would run one starting with ``=`` as a formula.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import PurePosixPath

from protloc.files import spreadsheet_safe  # one function for the CLI and the platform

CELL_COLUMNS = ["level", "cell_id", "centroid_y", "centroid_x", "area", "border", "top_class"]


def results_csv(items: list[dict]) -> str:
    """One row per submission; where an item lists its cells (``item["cells"]["items"]``), each cell
    follows its image's row (``level`` = image | cell, with the cell's id, centroid, area, border
    flag and top class), so one table holds both and filters by ``level``."""
    classes: list[str] = []
    for item in items:
        for cls in item.get("classes", []):
            if cls not in classes:
                classes.append(cls)
    with_cells = any("items" in (item.get("cells") or {}) for item in items)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    head = ["id", "name", "model", "status", "created_at"] + (CELL_COLUMNS if with_cells else []) + ["predicted"]
    writer.writerow(head + [spreadsheet_safe(c) for c in classes])
    for item in items:
        probs = item.get("probabilities", {})
        ident = [item["id"], item["name"], item["model"], item["status"], item["created_at"]]
        level = ["image", "", "", "", "", "", ""] if with_cells else []
        text = ident + level + [";".join(item.get("predicted", []))]
        writer.writerow([spreadsheet_safe(str(cell)) for cell in text] + [f"{probs[c]:.6f}" if c in probs else "" for c in classes])
        for cell in (item.get("cells") or {}).get("items", []):
            own = cell["probabilities"]
            geometry = ["cell", cell["cell_id"], f"{cell['centroid_y']:.2f}", f"{cell['centroid_x']:.2f}", cell["area"],
                        str(bool(cell["border"])).lower(), cell["top_class"]]
            text = ident + geometry + [";".join(cell["predicted"])]
            writer.writerow([spreadsheet_safe(str(v)) for v in text] + [f"{own[c]:.6f}" if c in own else "" for c in classes])
    return buffer.getvalue()


def mask_member(name: str, suffix: str) -> str:
    """The zip member of a sample's label image: ``masks/<name>_cellmask.png`` (``protloc cells
    --masks`` layout); the name's folders kept, an image suffix dropped."""
    pure = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in pure.parts if p not in ("", ".", "..", "/")] or ["sample"]
    stem = parts[-1]
    for ending in (".tif", ".tiff", ".npz", ".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(ending):
            stem = stem[: -len(ending)]
    return "/".join(["masks", *parts[:-1], f"{stem or 'sample'}_cellmask{suffix}"])


def batch_zip(platform, batch_id: str, viewer) -> bytes:
    """``results.csv`` (every sample of the batch, its cells after it) and ``masks/``: the label image
    of each sample whose cells were computed."""
    from protloc.web.pictures.cells import labels_path

    batch = platform.batches.get(batch_id, viewer)  # NotFound for another's batch
    items = [platform.get_submission(s["id"], viewer, cells=True) for s in batch["submissions"]]
    buffer = io.BytesIO()
    taken: set[str] = set()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("results.csv", results_csv(items))
        for item in items:
            path = labels_path(platform.store, item["id"]) if item["cells"]["count"] else None
            if path is None:
                continue
            member = mask_member(item["name"], path.suffix)
            if member in taken:  # two samples of one name: the second keeps its id too
                member = member.replace("_cellmask", f"-{item['id']}_cellmask")
            taken.add(member)
            archive.write(path, member, compress_type=zipfile.ZIP_STORED)  # PNG is compressed already
    return buffer.getvalue()
