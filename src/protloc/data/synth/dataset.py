"""A synthetic data set on disk: channel TIFFs, labels.csv, and the per-cell truth.

Layout of ``OUT`` (format in docs/synthetic-cells.md):

- ``<id>_<colour>.tif``: one 16-bit TIFF per channel (HPA colours), as the ``channels`` reader reads;
- ``labels.csv``: ``id,labels`` with the field's classes separated by ``;``;
- ``masks/<id>_cellmask.png`` and ``masks/<id>_nucleimask.png``: 16-bit label images, 0 background,
  1..N the cells (a nucleus carries its cell's id); the layout ``--masks DIR`` reads;
- ``cells.csv``: one row per cell: ``image_id,cell_id,labels,expressing,mitotic,touches_border,area_px``.

Determinism: sample ``i`` of a data set with seed ``K`` is drawn from its own generator seeded with
``(K, i)`` -- labels first, then the image -- so the bytes do not depend on the number of workers or
on which samples were generated before. TIFFs are written without date or software tags.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.synth.field import PIXEL_SIZE_UM
from protloc.data.synth.labels import sample_labels
from protloc.data.synth.render import RenderedField, _check_size, render_field
from protloc.errors import ProtlocError
from protloc.labels import HPA13, LabelSet

ID_PREFIX = "synth-"
MAX_SAMPLES = 10_000_000
MASKS_FOLDER = "masks"
CELLS_FILE = "cells.csv"
CELLS_HEADER = ["image_id", "cell_id", "labels", "expressing", "mitotic", "touches_border", "area_px"]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a data set with ``seed``: independent of all others."""
    return np.random.default_rng([int(seed), int(index)])


def sample_id(index: int, samples: int) -> str:
    return f"{ID_PREFIX}{index:0{max(5, len(str(samples - 1)))}d}"


def draw_field(seed: int, index: int, height: int, width: int,
               label_set: LabelSet = HPA13) -> tuple[tuple[int, ...], RenderedField]:
    """Labels and rendered field (image and per-cell truth) of sample ``index``."""
    rng = sample_rng(seed, index)
    labels = sample_labels(rng, label_set)
    return labels, render_field(rng, labels, height, width, label_set)


def draw_sample(seed: int, index: int, height: int, width: int,
                label_set: LabelSet = HPA13) -> tuple[tuple[int, ...], np.ndarray]:
    """Labels and image of sample ``index``: the same for the same (seed, index, size)."""
    labels, field = draw_field(seed, index, height, width, label_set)
    return labels, field.image


def write_tiff(path: Path, image: np.ndarray) -> None:
    """A plain, reproducible grayscale TIFF (no date, software or description tags) that states its
    pixel size: ``PIXEL_SIZE_UM`` as XResolution/YResolution in pixels per centimetre, the tags every
    reader (protloc's, Fiji's, tifffile's) takes the physical size from. Without them a user's run
    would not know the fields are 0.5 µm/px and would feed them to a 0.08 µm/px model unscaled."""
    import tifffile

    per_cm = 1e4 / PIXEL_SIZE_UM
    tifffile.imwrite(path, image, photometric="minisblack", metadata=None, software=False, datetime=None,
                     resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")


def write_label_image(path_stem: Path, labels: np.ndarray) -> Path:
    """A label image as 16-bit PNG, or as 32-bit TIFF when it holds more than 65,535 cells."""
    if labels.dtype == np.uint16:
        from PIL import Image

        path = path_stem.with_suffix(".png")
        Image.fromarray(labels).save(path, format="PNG")
    else:
        path = path_stem.with_suffix(".tif")
        write_tiff(path, labels)
    return path


def _cell_rows(sid: str, field: RenderedField) -> list[list[str]]:
    yes_no = {True: "yes", False: "no"}
    return [[sid, str(c.cell_id), ";".join(c.classes), yes_no[c.expressing], yes_no[c.mitotic],
             yes_no[c.touches_border], str(c.area_px)] for c in field.cells]


def _write_sample(task: tuple[str, int, int, int, int, str]) -> tuple[int, str, list[list[str]]]:
    out, seed, index, height, width, sid = task
    labels, field = draw_field(seed, index, height, width)
    for channel, plane in zip(CHANNELS, field.image):
        write_tiff(Path(out) / f"{sid}_{COLOUR_OF_CHANNEL[channel]}.tif", plane)
    masks = Path(out) / MASKS_FOLDER
    write_label_image(masks / f"{sid}_cellmask", field.cell_mask)
    write_label_image(masks / f"{sid}_nucleimask", field.nuclei_mask)
    return index, ";".join(HPA13.names(labels)), _cell_rows(sid, field)


def _check_whole(value, option: str, minimum: int, maximum: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise ProtlocError(f"{option} must be a whole number {bound}, got {value!r}")


def generate_dataset(out: str | os.PathLike, samples: int, size: int = 512, seed: int = 0, *,
                     height: int | None = None, width: int | None = None, workers: int | None = None,
                     overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write a synthetic data set: channel TIFFs, ``labels.csv``, cell masks and ``cells.csv``.

    ``height``/``width`` override ``size`` for non-square images. ``workers`` processes render in
    parallel (default: the CPUs this process may use); the output does not depend on their number. A
    non-empty ``out`` is refused unless ``overwrite``, which removes the files of an earlier synthetic
    set there first.
    """
    _check_whole(samples, "--samples", 1, MAX_SAMPLES)
    _check_whole(seed, "--seed", 0)
    height = size if height is None else height
    width = size if width is None else width
    _check_size(height, width)
    workers = default_workers() if workers is None else workers
    _check_whole(workers, "--workers", 1)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProtlocError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ProtlocError(f"{out} is not empty; choose a new folder or pass --overwrite")
        _remove_previous(out)
    try:
        (out / MASKS_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtlocError(f"cannot create {out}: {exc.strerror or exc}") from None

    tasks = [(str(out), int(seed), i, int(height), int(width), sample_id(i, samples)) for i in range(samples)]
    labels: dict[int, str] = {}
    cells: dict[int, list[list[str]]] = {}
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=samples, desc="synth", unit="sample", disable=not show, file=sys.stderr)
    try:
        if workers == 1 or samples == 1:
            results = map(_write_sample, tasks)
            for index, text, rows in results:
                labels[index], cells[index] = text, rows
                bar.update()
        else:
            import multiprocessing

            # fork: no re-import of the caller's __main__ (works from scripts without a main guard)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            with multiprocessing.get_context(method).Pool(min(workers, samples)) as pool:
                chunk = max(1, min(16, samples // (8 * workers)))
                for index, text, rows in pool.imap_unordered(_write_sample, tasks, chunksize=chunk):
                    labels[index], cells[index] = text, rows
                    bar.update()
    finally:
        bar.close()

    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "labels"])
        for index, task in enumerate(tasks):
            writer.writerow([task[5], labels[index]])
    with open(out / CELLS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CELLS_HEADER)
        for index in range(samples):
            writer.writerows(cells[index])
    return out


def default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, available)


def _is_ours(path: Path) -> bool:
    if path.name in ("labels.csv", CELLS_FILE):
        return True
    return path.is_file() and path.name.startswith(ID_PREFIX) and path.suffix == ".tif"


def _remove_previous(out: Path) -> None:
    """Remove an earlier synthetic set's files; refuse to touch a folder holding anything else."""
    masks = out / MASKS_FOLDER
    ours = [p for p in out.iterdir() if _is_ours(p)]
    mask_files = [p for p in masks.iterdir()] if masks.is_dir() else []
    others = [p for p in out.iterdir() if p not in ours and p != masks]
    others += [p for p in mask_files if not (p.is_file() and p.name.startswith(ID_PREFIX)
                                             and p.suffix in (".png", ".tif"))]
    if others:
        raise ProtlocError(f"{out} holds files that are not a synthetic data set (e.g. {others[0].name}); "
                           "choose another folder")
    for path in ours + mask_files:
        path.unlink()
