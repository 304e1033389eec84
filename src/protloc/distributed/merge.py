"""The parts of a finished run into the one output the user asked for, with the single-process writers.

Predictions: each part's rows, in input order, go through ``protloc.inference.batch``'s row writer into
the run's journal beside ``--out`` (the one ``protloc predict`` appends to, holding the same lock,
skipping the ids it already holds) and ``protloc.inference.journal.finish`` makes it the output;
unreadable samples go to ``<stem>.errors.csv`` through the same ``write_skipped``.
Cells: each image's part (``protloc.cells.outputs.save_part``'s format), in input order, into the result
``protloc.cells.pipeline`` builds (``add_part``), written by its ``write_outputs``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protloc.distributed.shards import Plan


def merge_predictions(plan: Plan, writer, fmt: str, out: Path, classes: list[str], columns: list[str], result) -> None:
    """Every part's rows, in shard order, into ``result`` (predicted, failures) and the output; the
    writer is closed. Nothing predicted (and nothing earlier): the error of ``protloc predict``."""
    import pyarrow.parquet as pq

    from protloc.errors import ProtlocError
    from protloc.inference import journal
    from protloc.inference.batch import nothing_predicted, write_skipped

    try:
        for shard in range(len(plan.shards)):
            part = plan.part(shard)
            if not part.is_file():  # every sample of the shard was in --out before the run
                continue
            for row in pq.read_table(part).to_pylist():
                if row["failure"] is not None:
                    result.failures.append({"id": row["id"], "reason": row["failure"]})
                elif row["id"] not in writer.done:  # a merge interrupted half-way is resumed, not doubled
                    # one fsync at the end, not per row (10⁶ rows): until the parts are removed, a merge
                    # cut short is redone from them, skipping the rows already in the journal
                    writer.write(row["id"], np.asarray(row["probs"]), row["predicted"], classes,
                                 row["pixel_size_um"], row["scale"], row["precision"], sync=False)
                    result.predicted += 1
        writer.sync()
    finally:
        writer.close()
    errors_file = out.with_name(out.stem + ".errors.csv")
    if result.failures:
        result.errors_file = errors_file
        write_skipped(errors_file, result.failures)
    else:  # an earlier run's list: its inputs were tried again and read this time
        errors_file.unlink(missing_ok=True)
    if not result.predicted and not result.already_done:
        raise ProtlocError(nothing_predicted(result))
    journal.finish(writer.path, out, fmt, columns)


def gather_cells(plan: Plan):
    """The single-process run's result (``protloc.cells.pipeline.new_result``/``add_part``) from the
    shards' parts, in input order."""
    import json

    from protloc.cells.outputs import load_part
    from protloc.cells.pipeline import add_part, new_result
    from protloc.errors import ProtlocError

    result = new_result()
    for shard in range(len(plan.shards)):
        summary_file = plan.part(shard)
        summary = json.loads(summary_file.read_text())
        result.failures += [tuple(f) for f in summary["failures"]]
        for image_id, name in summary["images"]:
            part = load_part(summary_file.with_name(name), image_id)
            if part is None:
                raise ProtlocError(f"{summary_file.with_name(name)}: the part of {image_id} is missing or cut; "
                                   f"remove {summary_file} and rerun the same command (its shard is redone)")
            add_part(result, image_id, part)
    return result
