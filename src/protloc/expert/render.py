"""What the expert sees (paper Appendix Figure 7): four PNGs per sample at full resolution.

The images come from ``protloc.visualization.expert_views`` (protein alone; protein in green over each
reference channel in red; contrast stretched). They are cached in the study's ``views/`` folder, so
the annotation pages render each sample once.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from protloc.files import sample_file_stem

VIEWS = ("protein", "protein+nucleus", "protein+microtubules", "protein+er")
VIEW_TITLES = {
    "protein": "Protein",
    "protein+nucleus": "Protein + nucleus",
    "protein+microtubules": "Protein + microtubules",
    "protein+er": "Protein + ER",
}


def view_file(folder: Path, sample_id: str, view: str) -> Path:
    return Path(folder) / sample_file_stem(sample_id) / f"{view}.png"


_render_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def render_views(study, sample_id: str, folder: Path | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write (or reuse) the four view PNGs of one sample; returns view name -> path."""
    from protloc.visualization import expert_views, save_png

    folder = Path(folder) if folder is not None else study.views_dir
    paths = {view: view_file(folder, sample_id, view) for view in VIEWS}
    if not overwrite and all(p.is_file() for p in paths.values()):
        return paths
    # The page asks for the four views at once: render a sample once, not four times in parallel.
    with _locks_guard:
        lock = _render_locks.setdefault(str(paths["protein"].parent), threading.Lock())
    with lock:
        if overwrite or not all(p.is_file() for p in paths.values()):
            images = expert_views(study.load_image(sample_id))
            for view, path in paths.items():
                save_png(path, images[view])  # atomic: a concurrent reader never sees half a PNG
    return paths


def cells_missing() -> str | None:
    """Why cell outlines cannot be drawn here (scikit-image, the cells extra, is missing), or None:
    the platform's own check (``protloc.cells.extra.missing_extra``)."""
    from protloc.cells.extra import missing_extra

    return missing_extra()


def render_cells(study, sample_id: str, folder: Path | None = None) -> Path:
    """The cell outlines of one sample (``protloc.cells.segment``), at the views' full resolution, cached
    beside them. ProtlocError when they cannot be drawn (scikit-image missing, an unreadable image)."""
    from protloc.errors import ProtlocError
    from protloc.visualization import outline_picture, save_png

    missing = cells_missing()
    if missing:
        raise ProtlocError(missing)
    folder = Path(folder) if folder is not None else study.views_dir
    path = view_file(folder, sample_id, "cells")
    if path.is_file():
        return path
    with _locks_guard:
        lock = _render_locks.setdefault(f"{path.parent}:cells", threading.Lock())
    with lock:
        if not path.is_file():
            from protloc.cells.segmentation import segment

            save_png(path, outline_picture(segment(study.load_image(sample_id)).cells))
    return path


def export_study(study, out: Path) -> int:
    """All samples' views as PNG files in ``out`` (one folder per sample) plus an index CSV; labels not included."""
    import csv

    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample_id in tqdm(study.sample_ids, desc="export", unit="sample", disable=not sys.stderr.isatty(), file=sys.stderr):
        paths = render_views(study, sample_id, folder=out, overwrite=True)
        rows.append([sample_id] + [str(paths[v].relative_to(out)) for v in VIEWS])
    with open(out / "samples.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id"] + list(VIEWS))
        writer.writerows(rows)
    # An answer sheet in the import format, so offline experts fill in the label column.
    with open(out / "answers-template.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "expert", "label"])
        writer.writerows([[sample_id, "", ""] for sample_id in study.sample_ids])
    with open(out / "classes.txt", "w") as handle:
        handle.write("\n".join(study.classes) + "\n")
    return len(rows)
