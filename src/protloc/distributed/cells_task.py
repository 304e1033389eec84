"""One shard of ``protloc cells`` inside a Dask worker: each image's part, as the single-process run saves it.

Each image goes through ``protloc.cells.pipeline.analyse_entry``, the one per-image function of
``protloc cells`` (read, segment or read the masks, predict the cells, write the label images and the
outline picture), and its part is saved with ``protloc.cells.outputs.save_part`` (the format of the
single-process run's ``<out>.parts/``). The label images and pictures are per image, so workers write
them straight to their final folders (a retried shard rewrites the same pixels). The shard's summary
(its images' part files in input order, the skipped images and why) is written last and whole: it
marks the shard finished. The merge (``protloc.distributed.merge.merge_cells``) reads the parts back in
input order into the result the single-process run builds and writes it with the same writer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from protloc.distributed.worker import (
    ShardJob,
    _ONE_SHARD_AT_A_TIME,
    _prepare,
    cached_model,
    readable_entry,
    worker_device,
    write_part_atomically,
)


def image_part(summary: Path, index: int) -> Path:
    """The part file of the shard's ``index``-th image (beside the shard's summary)."""
    return summary.with_name(f"{summary.stem}-{index:04d}.npz")


def cells_shard(job: ShardJob) -> dict:
    from protloc.cells.masks import open_masks
    from protloc.cells.outputs import save_part
    from protloc.cells.pipeline import analyse_entry

    with _ONE_SHARD_AT_A_TIME:
        start = time.perf_counter()
        worker = _prepare(job)
        options = job.options
        predictor = cached_model(job.model, worker_device(job.device), options.get("precision", "fp32"))
        masks = open_masks(options["masks_dir"]) if options.get("masks_dir") else None
        summary = Path(job.part)
        images, failures, first_size = [], [], None
        # the worker prints nothing: the client says the pixel size once, from the first shard's summary
        quiet = {"described": True, "warned": True}
        for index, entry in enumerate(job.entries):
            part, size, _ = analyse_entry(readable_entry(entry, worker), predictor, masks=masks,
                                          masks_out=Path(options["masks_out"]), maps_dir=options.get("maps_dir"),
                                          scoring=options["scoring"], nucleus_diameter=options.get("nucleus_diameter"),
                                          pixel_size=options.get("pixel_size"), said=quiet, max_pixels=job.max_pixels)
            if isinstance(part, str):
                failures.append([entry.id, part])
                continue
            first_size = first_size or size
            path = image_part(summary, index)
            save_part(path, entry.id, **part)
            images.append([entry.id, path.name])
        text = json.dumps({"images": images, "failures": failures})
        write_part_atomically(summary, lambda tmp: tmp.write_text(text))  # last: the shard is done
        return {"shard": job.shard, "images": len(job.entries), "worker": worker,
                "size": None if first_size is None else [first_size.um, first_size.source],
                "seconds": time.perf_counter() - start}
