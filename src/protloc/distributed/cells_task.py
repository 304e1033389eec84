"""One shard of ``protloc cells`` inside a Dask worker: its cells' rows and embeddings as an AnnData part.

Each image goes through the library calls ``protloc cells`` makes (``analyse_image``, ``cell_rows``,
``write_label_image``, ``class_overlay``), and the shard's rows are written with the pipeline's own
``write_anndata`` (obs = the table's rows, X = the embeddings): the merge reads the parts back and writes
the table and the one ``.h5ad`` with the pipeline's writers. The label images and outline pictures are
per image, so workers write them straight to their final folders (a retried shard rewrites the same
pixels). The part's ``.json`` (failures, images without cells) is written before its ``.h5ad``, and the
``.h5ad`` appears whole or not at all (the writer renames it into place): it marks the shard finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from protloc.distributed.worker import (
    ShardJob,
    _ONE_SHARD_AT_A_TIME,
    _prepare,
    cached_model,
    read_entry,
    worker_device,
    write_part_atomically,
)
from protloc.errors import DataError


def cell_columns(classes) -> list[str]:
    """The per-cell table's columns, in the pipeline's order."""
    return ["image_id", "cell_id", "centroid_y", "centroid_x", "area", "nucleus_area", "border", "expression",
            *classes, "predicted", "top_class"]


def image_columns(classes) -> list[str]:
    return ["image_id", "cells", *classes, "predicted"]


def anndata_uns(predictor, method: str | None, scoring: str) -> dict:
    """The .h5ad's ``uns`` as ``protloc cells`` writes it."""
    from protloc.cells.scoring import DESCRIPTIONS

    return {"model": predictor.name, "classes": list(predictor.classes), "method": method,
            "probabilities": DESCRIPTIONS[scoring], "scoring": scoring,
            "embedding": "gapnet-pl masked block averages (224)" if method == "masked-features" else "probabilities",
            "channels": predictor.network_channels}


def cells_shard(job: ShardJob) -> dict:
    from protloc.cells.masks import open_masks, write_label_image
    from protloc.cells.overlay import class_overlay, save_png
    from protloc.cells.pipeline import _top_above_threshold, analyse_image, cell_rows, write_anndata
    from protloc.data.pixel_size import pixel_size_of

    with _ONE_SHARD_AT_A_TIME:
        start = time.perf_counter()
        worker = _prepare(job)
        options = job.options
        predictor = cached_model(job.model, worker_device(job.device))
        masks = open_masks(options["masks_dir"]) if options.get("masks_dir") else None
        scoring = options["scoring"]
        rows, embeddings, image_rows, image_embeddings = [], [], [], []
        failures, no_cells, method, first_size = [], [], None, None
        for entry in job.entries:
            readable, image, failure = read_entry(entry, worker)
            try:
                if failure is not None:
                    raise DataError(failure)
                cells = nuclei = None
                if masks is not None:
                    cells, nuclei = masks.read(entry, image.shape[1:])
                size = pixel_size_of(readable.sources, *image.shape[-2:], override=options.get("pixel_size"))
                first_size = first_size or size
                analysed = analyse_image(predictor, image, entry.id, cells=cells, nuclei=nuclei,
                                         nucleus_diameter=options.get("nucleus_diameter"), pixel_size_um=size.um)
            except DataError as exc:
                failures.append([entry.id, str(exc)])
                continue
            preds = analysed.predictions
            method = preds.method
            if not len(preds.cell_ids):
                no_cells.append(entry.id)
            rows.extend(cell_rows(analysed, predictor, scoring=scoring))
            embeddings.append(preds.embeddings)
            image_rows.append({"image_id": entry.id, "cells": len(preds.cell_ids),
                               **{c: float(p) for c, p in zip(predictor.classes, preds.image_probabilities)},
                               "predicted": ";".join(predictor.predicted(preds.image_probabilities))})
            image_embeddings.append(preds.image_embedding)
            if masks is None:
                folder = Path(options["masks_out"])
                write_label_image(folder / f"{entry.id}_cellmask.png", analysed.cells)
                write_label_image(folder / f"{entry.id}_nucleimask.png", analysed.nuclei)
            if options.get("maps_dir"):
                scores = analysed.scores(predictor.classes, scoring)
                by_id = dict(zip(preds.cell_ids.tolist(), [_top_above_threshold(p, predictor) for p in scores]))
                colours = [by_id.get(i) for i in range(1, int(analysed.cells.max(initial=0)) + 1)]
                overlay = class_overlay(image, analysed.cells, analysed.nuclei, colours, predictor.classes)
                save_png(Path(options["maps_dir"]) / f"{entry.id}_cells.png", overlay)
        part = Path(job.part)
        uns = {k: v for k, v in anndata_uns(predictor, method, scoring).items() if v is not None}  # h5ad has no None
        dims = embeddings[0].shape[1] if embeddings else 0
        stacked = np.concatenate(embeddings) if rows else np.zeros((0, dims), np.float32)
        summary = {"failures": failures, "no_cells": no_cells, "images": len(image_rows),
                   "size": None if first_size is None else [first_size.um, first_size.source]}
        write_part_atomically(part.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(summary)))
        if options.get("embeddings") and image_rows:
            write_anndata(part.with_suffix(".images.h5ad"), image_rows, image_columns(predictor.classes),
                          np.stack(image_embeddings), uns)
        write_anndata(part, rows, cell_columns(predictor.classes), stacked, uns)  # last: the shard is done
        return {"shard": job.shard, "images": len(job.entries), "worker": worker, "size": first_size,
                "seconds": time.perf_counter() - start}
