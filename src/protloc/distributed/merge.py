"""The parts of a finished run into the one output the user asked for, with the single-process writers.

Predictions: each part's rows, in input order, go through ``protloc.inference.batch``'s row writer (the
one ``protloc predict`` appends with, holding the same lock and skipping ids it already holds) and,
for Parquet, its journal conversion; unreadable samples go to ``<stem>.errors.csv`` as there.
Cells: the parts' AnnData rows and embeddings, in input order, through ``protloc.cells.pipeline``'s
``write_table`` and ``write_anndata``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from protloc.distributed.shards import Plan


def open_prediction_output(out: Path, columns: list[str]):
    """The output's row writer, opened before any work: it refuses a second run on the same --out (the
    lock) and knows the ids an earlier run already wrote (those are not predicted again)."""
    from protloc.inference.batch import _RowWriter, output_format

    fmt = output_format(out)
    journal = out.with_name(out.name + ".journal.jsonl") if fmt == "parquet" else out
    return _RowWriter(journal, "csv" if fmt == "csv" else "jsonl", columns), fmt


def merge_predictions(plan: Plan, writer, fmt: str, out: Path, classes: list[str], columns: list[str]) -> tuple[int, list]:
    """(rows written, failures) from every part, in shard order; the writer is closed."""
    import pyarrow.parquet as pq

    from protloc.inference.batch import _journal_to_parquet

    written, failures = 0, []
    try:
        for shard in range(len(plan.shards)):
            part = plan.part(shard)
            if not part.is_file():  # every sample of the shard was in --out before the run
                continue
            for row in pq.read_table(part).to_pylist():
                if row["failure"] is not None:
                    failures.append({"id": row["id"], "reason": row["failure"]})
                elif row["id"] not in writer.done:  # a merge interrupted half-way is resumed, not doubled
                    # one fsync at the end, not per row (10⁶ rows): until the parts are removed, a merge
                    # cut short is redone from them, skipping the rows already in --out
                    writer.write(row["id"], np.asarray(row["probs"]), row["predicted"], classes,
                                 row["pixel_size_um"], row["scale"], sync=False)
                    written += 1
        writer.handle.flush()
        os.fsync(writer.handle.fileno())
    finally:
        writer.close()
    if fmt == "parquet":
        _journal_to_parquet(writer.path, out, columns)
    return written, failures


def write_errors(out: Path, failures: list[dict]) -> Path:
    """``<stem>.errors.csv``: the unreadable samples and why, as ``protloc predict`` writes it."""
    path = out.with_name(out.stem + ".errors.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "reason"], *[[f["id"], f["reason"]] for f in failures]])
    return path


def merge_cells(plan: Plan, paths: dict, classes: list[str], embeddings: bool, result) -> None:
    """The per-cell table, the .h5ad (and with ``embeddings`` the per-image .h5ad) from the parts."""
    import json

    import anndata

    from protloc.cells.pipeline import write_anndata, write_table
    from protloc.distributed.cells_task import cell_columns, image_columns

    rows, stacked, image_rows, image_stacked, uns = [], [], [], [], None
    for shard in range(len(plan.shards)):
        part = plan.part(shard)
        summary = json.loads(part.with_suffix(".json").read_text())
        result.failures += [tuple(f) for f in summary["failures"]]
        result.no_cells += summary["no_cells"]
        result.images += summary["images"]
        data = anndata.read_h5ad(part)
        if summary["images"]:
            uns = _plain(data.uns)  # the last analysed image's method, as the single-process run records
        if data.n_obs:
            rows += _records(data.obs, cell_columns(classes))
            stacked.append(np.asarray(data.X))
        images = part.with_suffix(".images.h5ad")
        if embeddings and images.is_file():
            per_image = anndata.read_h5ad(images)
            image_rows += _records(per_image.obs, image_columns(classes))
            image_stacked.append(np.asarray(per_image.X))
    result.cells = len(rows)
    if result.images == 0:
        from protloc.errors import ProtlocError

        reasons = "; ".join(f"{i}: {r}" for i, r in result.failures[:3])
        raise ProtlocError(f"no image could be analysed ({reasons})")
    columns = cell_columns(classes)
    dims = stacked[0].shape[1] if stacked else 0
    matrix = np.concatenate(stacked) if stacked else np.zeros((0, dims), np.float32)
    result.files.append(write_table(paths["table"], rows, columns))
    result.files.append(write_anndata(paths["h5ad"], rows, columns, matrix, uns))
    if embeddings:
        result.files.append(write_anndata(paths["images"], image_rows, image_columns(classes),
                                          np.concatenate(image_stacked), uns))


def _records(obs, columns: list[str]) -> list[dict]:
    """The table rows back from an AnnData obs (its strings may have become categories on writing)."""
    frame = obs[columns].copy()
    for name in frame.columns:
        if str(frame[name].dtype) == "category":
            frame[name] = frame[name].astype(str)
    return frame.to_dict("records")


def _plain(uns) -> dict:
    """``uns`` as the writer took it (h5ad returns lists as arrays)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dict(uns).items()}
