"""A submission's pictures, made after its probabilities: on first view or by an idle worker, then cached.

Two groups, each rendered in one go and cached as PNGs under the store's render folder: the *views*
(composite and the four channels; cheap) and the *maps* (the localisation map of each class the
result names; a backward pass through the network), and the *cells* overlay (``cells.png``: the cell
outlines coloured by class, ``protloc.web.pictures.cells``). All are drawn at display size (the longest side
at most ``DISPLAY_SIZE``, by block means) unless full resolution is asked for (``full=True``, cached
in ``full/``). The pictures are written to a staging file and moved into place, so two processes
that render the same submission at once (a worker and a web server on first view) never show a
half-written file; within one process a lock per group makes the second caller wait for the first.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Callable

import numpy as np
from sqlalchemy import select

from protloc import visualization
from protloc.data.channels import CHANNELS
from protloc.visualization import display_factor, save_png, shrink
from protloc.web.storage import db
from protloc.web.storage.samples import load_stored_sample
from protloc.web.storage.store import BlobStore

# Decoded samples kept for their pictures after their probabilities (a 2048² field is 64 MB): the
# newest few, so that the pictures of what was just predicted are not decoded again.
REMEMBERED_SAMPLES = 2
VIEW_NAMES = ("composite.png", *(f"channel-{c}.png" for c in CHANNELS))
CELLS_NAME = "cells.png"


def is_image_name(name: str) -> bool:
    return name in VIEW_NAMES or name == CELLS_NAME or (name.startswith("map-") and name.endswith(".png") and name[4:-4].isdigit())


def render_views(image: np.ndarray, folder: Path, factor: int) -> None:
    small = shrink(image, factor).astype(np.float32, copy=False)
    for channel in CHANNELS:
        save_png(folder / f"channel-{channel}.png", visualization.channel_image(small, channel))
    save_png(folder / "composite.png", visualization.composite(small))  # last: it marks the group done


def render_maps(predictor, image: np.ndarray, map_classes: list[str], folder: Path, factor: int) -> None:
    maps = predictor.localization_maps(image, map_classes)  # at full resolution: where the network looked
    small = shrink(image, factor).astype(np.float32, copy=False)
    base = visualization.composite(small)
    for cls in map_classes:
        index = predictor.classes.index(cls)
        save_png(folder / f"map-{index}.png", visualization.overlay_map(small, shrink(maps[cls], factor), base=base))


class Renderer:
    """Finds or draws one picture of a submission; ``render_all`` draws a finished one's display set."""

    def __init__(self, predictors: dict, sessions, store: BlobStore, max_pixels: int | None = None) -> None:
        self.predictors = predictors
        self.sessions = sessions
        self.store = store
        self.max_pixels = max_pixels  # the server's pixel limit, for samples decoded again from the store
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self._samples: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def remember(self, submission_id: str, image: np.ndarray) -> None:
        """Keep a just-predicted sample for its pictures (the newest ``REMEMBERED_SAMPLES`` only)."""
        with self._guard:
            self._samples[submission_id] = image
            while len(self._samples) > REMEMBERED_SAMPLES:
                self._samples.popitem(last=False)

    def forget(self, submission_id: str) -> None:
        with self._guard:
            self._samples.pop(submission_id, None)

    def folder(self, submission_id: str, full: bool) -> Path:
        base = self.store.render_dir(submission_id)
        return base / "full" if full else base

    def cached(self, submission_id: str, name: str, full: bool = False) -> Path | None:
        path = self.folder(submission_id, full) / name
        return path if path.is_file() else None

    def image(self, submission_id: str, name: str, full: bool = False, image: np.ndarray | None = None) -> Path | None:
        """The picture's file, drawn now if it is not cached; None when the submission has no such picture."""
        path = self.cached(submission_id, name, full)
        if path is not None:
            return path
        group = "views" if name in VIEW_NAMES else "cells" if name == CELLS_NAME else "maps"
        with self._lock((submission_id, group, full)):
            path = self.cached(submission_id, name, full)  # drawn while we waited
            if path is not None:
                return path
            if not self._draw(submission_id, group, full, image):
                return None
        return self.cached(submission_id, name, full)

    def render_all(self, submission_id: str, image: np.ndarray | None = None,
                   keep_going: Callable[[], bool] = lambda: True) -> bool:
        """Views and maps at display size, unless cached (an idle worker's low-priority work). Between
        pictures ``keep_going()`` is asked; False stops there (False is returned: not all drawn)."""
        self.image(submission_id, "composite.png", image=image)
        with self.sessions() as session:
            result = session.get(db.Result, submission_id)
            names = [f"map-{result.classes.index(c)}.png" for c in result.maps] if result is not None else []
            has_cells = session.scalar(select(db.CellResult.count).where(db.CellResult.submission_id == submission_id))
        if has_cells:  # cheap, before the map's backward pass
            if not keep_going():
                return False
            self.image(submission_id, CELLS_NAME, image=image)
        if names:
            if not keep_going():
                return False
            self.image(submission_id, names[0], image=image)
        return True

    def _lock(self, key: tuple) -> threading.Lock:
        with self._guard:
            if len(self._locks) > 256:  # forget idle locks of old submissions
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault(key, threading.Lock())

    def _draw(self, submission_id: str, group: str, full: bool, image: np.ndarray | None) -> bool:
        with self.sessions() as session:
            row = session.get(db.Submission, submission_id)
            result = session.get(db.Result, submission_id) if row is not None else None
            if row is None or row.status != db.DONE or result is None:
                return False
            kind, files, model_key = row.input_kind, list(row.files), row.model_key
            map_classes = list(result.maps)
            classes = list(result.classes)
            cells = session.get(db.CellResult, submission_id) if group == "cells" else None
        if group == "cells" and (cells is None or not cells.count):
            return False
        if group == "maps" and (model_key not in self.predictors or not map_classes):
            return False
        if image is None:
            with self._guard:
                image = self._samples.get(submission_id)
        if image is None:
            image = load_stored_sample(self.store, kind, files, self.max_pixels)
        factor = display_factor(image.shape[1], image.shape[2], full)
        folder = self.folder(submission_id, full)
        if group == "views":
            render_views(image, folder, factor)
        elif group == "cells":
            from protloc.web.pictures.cells import load_labels, render_overlay

            labels = load_labels(self.store, submission_id)
            if labels is None or labels.shape != image.shape[1:]:
                return False
            folder.mkdir(parents=True, exist_ok=True)
            render_overlay(image, labels, cells, classes, factor, folder / CELLS_NAME)
        else:
            render_maps(self.predictors[model_key], image, map_classes, folder, factor)
        return True
