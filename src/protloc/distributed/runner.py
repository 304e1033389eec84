"""The client side of a distributed run: list, plan, submit the shards, show progress, merge.

The client decodes nothing: it lists the samples, cuts them into shards (``shards``), and keeps a window
of shards submitted (a few per worker, so 10⁶ samples are never one graph in the scheduler's memory).
A worker that dies takes its shard with it; the scheduler runs the shard again on another worker, and
since a part is written whole under its own name, the rerun replaces it with the same rows. When the
client itself dies, the parts already written stay; the same command resumes from them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from protloc.distributed.clusters import ClusterSpec, open_client
from protloc.distributed.shards import make_plan, remove
from protloc.distributed.worker import ShardJob
from protloc.errors import ProtlocError

WINDOW = 100  # shards submitted at once, at least


def _probe(entry, max_pixels):
    """On a worker: the first sample's (height, width), read as a shard would read it."""
    from protloc.distributed.worker import _prepare, read_entry

    worker = _prepare(ShardJob(-1, [], "", "", max_pixels=max_pixels))
    sample, _ = read_entry(entry, worker, max_pixels=max_pixels)
    return (2048, 2048) if sample is None else tuple(sample.image.shape[-2:])


def _resolved(model: str) -> str:
    """The model file every worker loads (``pretrained`` resolved here, so all load the same file)."""
    if str(model).lower().endswith(".onnx"):
        return str(Path(model).absolute())
    from protloc.inference.predictor import resolve_model_file

    return str(Path(resolve_model_file(model)).absolute())


def run_shards(spec: ClusterSpec, kind: str, entries, out: Path, model: str, device: str, options: dict,
               shard_size: int | None, progress: bool, on_first_size=None, max_pixels: int | None = None,
               stats: dict | None = None):
    """Run every unfinished shard of the plan on the cluster; returns the plan (all parts written).
    ``stats`` (the benchmark's) receives each shard's summary."""
    from distributed import as_completed

    if kind == "predict":
        from protloc.distributed.worker import predict_shard as task
    else:
        from protloc.distributed.cells_task import cells_shard as task

    with open_client(spec) as (client, description):
        print(f"protloc: running on {description}; {_dashboard(client)}", file=sys.stderr)

        def probe():
            return client.submit(_probe, entries[0], max_pixels, pure=False).result()

        plan, reused = make_plan(out, kind, entries, model, options, shard_size, probe)
        finished = plan.finished()
        todo = [i for i in range(len(plan.shards)) if i not in finished]
        if reused:
            print(f"protloc: resuming: {reused} of {len(plan.shards)} shard(s) already done in {plan.folder}",
                  file=sys.stderr)
        summaries = _submit_all(client, as_completed, task, plan, todo, kind, model, device, options, max_pixels,
                                progress, on_first_size)
        if stats is not None:
            stats["shards"] = summaries
    return plan, reused


def _submit_all(client, as_completed, task, plan, todo, kind, model, device, options, max_pixels, progress,
                on_first_size) -> list[dict]:
    from collections import deque

    from tqdm import tqdm

    tag = plan.folder.name
    pending = deque(todo)
    images = sum(len(plan.shards[i]) for i in todo)
    bar = tqdm(total=images, desc=kind if kind == "cells" else "predict", unit="img", disable=not progress,
               file=sys.stderr)
    done_shards, said, summaries = 0, False, []
    seq = as_completed()

    def top_up():
        workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        # A window of shards, never all of them (10⁶ samples are not one graph), but wide enough for
        # adaptive scaling to see the backlog and ask for its jobs; the scheduler hands them out.
        while pending and seq.count() < max(2 * workers + 2, WINDOW):
            shard = pending.popleft()
            job = ShardJob(shard, plan.shards[shard], str(plan.part(shard)), model, device, options, max_pixels)
            seq.add(client.submit(task, job, key=f"protloc-{kind}-{shard:06d}-{tag}-{time.time_ns()}",
                                  pure=False, retries=0))
        return workers

    workers = top_up()
    try:
        for future in seq:
            summary = _result(future)
            summaries.append(summary)
            done_shards += 1
            bar.update(summary["images"])
            if not said and summary.get("size") is not None and on_first_size is not None:
                on_first_size(summary["size"])
                said = True
            workers = top_up()
            bar.set_postfix_str(f"shards {done_shards}/{len(todo)}, workers {workers}")
    except BaseException:
        client.cancel([f for f in seq.futures] if hasattr(seq, "futures") else [])
        raise
    finally:
        bar.close()
    return summaries


def _dashboard(client) -> str:
    """The dashboard's address, or that the scheduler has none (started with --no-dashboard, no bokeh)."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return "the scheduler serves no Dask dashboard"
    return f"Dask dashboard: {client.dashboard_link}"


def _result(future) -> dict:
    """A shard's summary, or its failure as one line: a worker that cannot see an input, a shard that
    killed every worker it ran on, or what the task raised."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except ProtlocError:
        raise
    except KilledWorker as exc:
        raise ProtlocError(f"a shard's worker died on each of its tries ({exc}): out of memory? "
                           "See the workers' logs") from None
    except Exception as exc:  # noqa: BLE001 - whatever the task raised, said in one line
        raise ProtlocError(f"a shard failed on a worker: {type(exc).__name__}: {exc}") from None


def predict(spec: ClusterSpec, inputs, model: str, out, *, device: str = "cpu", precision: str = "fp32",
            input_format=None, reader_options=None, shard_size: int | None = None, progress: bool = True,
            options: dict | None = None, stats: dict | None = None, max_pixels: int | None = None):
    """``protloc predict --cluster``: the same output (rows, order, errors file, journal) as the
    single-process run (``protloc.inference.batch.run_batch_prediction``)."""
    from protloc.data.pixel_size import check_pixel_size
    from protloc.distributed.inputs import list_entries
    from protloc.distributed.merge import merge_predictions
    from protloc.files import spreadsheet_safe
    from protloc.inference.batch import BatchResult, open_journal, prediction_columns
    from protloc.inference.predictor import load_model

    options = dict(options or {}, precision=precision)
    out = Path(out)
    if options.get("pixel_size") is not None:
        check_pixel_size(options["pixel_size"])
    model_file = _resolved(model)
    # its classes (the columns) and checks, before any job is submitted (the workers load it on their devices)
    predictor = load_model(model_file, precision=precision)
    if options.get("whole_image") and not predictor.fully_convolutional:
        raise ProtlocError(f"{predictor.model_name} has fixed-size dense layers: --whole-image needs GapNet-PL")
    entries = list_entries(list(inputs), input_format, reader_options)
    columns = prediction_columns(predictor.classes)
    writer, fmt = open_journal(out, columns)
    try:
        written_as = spreadsheet_safe if fmt == "csv" else str  # a CSV holds its ids defused
        todo = [e for e in entries if written_as(e.id) not in writer.done]
        result = BatchResult(already_done=len(entries) - len(todo), out=out)
        plan = None
        if todo:
            plan, _ = run_shards(spec, "predict", entries, out, model_file, device, options, shard_size, progress,
                                 on_first_size=lambda size: _say_size(size, predictor), max_pixels=max_pixels,
                                 stats=stats)
    except BaseException:
        writer.close()
        raise
    if plan is None:  # every row was there: the finished output as it was
        from protloc.inference import journal

        writer.close()
        if journal.journal_path(out, fmt).exists():
            journal.finish(writer.path, out, fmt, columns)
        return result
    merging = time.perf_counter()
    merge_predictions(plan, writer, fmt, out, predictor.classes, columns, result)
    if stats is not None:
        stats["merge_s"] = time.perf_counter() - merging
    remove(plan)
    return result


def cells(spec: ClusterSpec, inputs, model: str, out, *, device: str = "cpu", precision: str = "fp32",
          input_format=None, reader_options=None, shard_size: int | None = None, progress: bool = True,
          masks_dir=None, maps_dir=None, embeddings: bool = False, image_prior: bool = False,
          scoring: str | None = None, nucleus_diameter: float | None = None, pixel_size: float | None = None,
          max_pixels: int | None = None):
    """``protloc cells --cluster``: the table, .h5ad, errors list and label images of the single-process
    run (``protloc.cells.pipeline.run_cells``), from the same per-image function and the same writer."""
    from protloc.cells.outputs import remove_stale_pictures, write_outputs
    from protloc.cells.outputs import output_paths
    from protloc.cells.pipeline import require_cells_extra
    from protloc.cells.scoring import DEFAULT_SCORING, check_scoring
    from protloc.data.pixel_size import check_pixel_size
    from protloc.distributed.inputs import list_entries
    from protloc.distributed.merge import gather_cells
    from protloc.inference.precision import resolve_precision
    from protloc.inference.predictor import load_model

    require_cells_extra()
    scoring = check_scoring(scoring or ("geometric-mean" if image_prior else DEFAULT_SCORING))
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    paths = output_paths(out)
    if masks_dir is not None:
        from protloc.cells.masks import open_masks

        open_masks(masks_dir)  # a bad --masks is said here, not by every worker
        masks_dir = str(Path(masks_dir).absolute())
    # int8 refused before any work; the precision the .h5ad records (the workers' device may differ
    # from this client's: with auto, a GPU worker's bf16 is resolved there)
    ran_at = resolve_precision(precision, device, maps=True).precision
    model_file = _resolved(model)
    predictor = load_model(model_file, precision=precision)
    entries = list_entries(list(inputs), input_format, reader_options)
    paths["table"].parent.mkdir(parents=True, exist_ok=True)
    options = {"scoring": scoring, "masks_dir": masks_dir, "nucleus_diameter": nucleus_diameter,
               "pixel_size": pixel_size, "precision": precision,
               "maps_dir": None if maps_dir is None else str(Path(maps_dir).absolute()),
               "masks_out": str(paths["masks"].absolute())}
    plan, _ = run_shards(spec, "cells", entries, paths["table"], model_file, device, options, shard_size, progress,
                         on_first_size=lambda size: _say_size(size, predictor), max_pixels=max_pixels)
    result = gather_cells(plan)
    write_outputs(result, predictor, paths, scoring, ran_at, embeddings)
    if maps_dir is not None:
        result.files += sorted(Path(maps_dir).glob("*_cells.png"))
    remove(plan)
    remove_stale_pictures(paths, maps_dir)
    result.rows = result.image_rows = result.cell_embeddings = result.image_embeddings = []
    return result


def _say_size(size, predictor) -> None:
    """The pixel-size line (or warning) a single-process run prints, once, from the first shard."""
    from protloc.data.pixel_size import PixelSize, describe, warn_unknown

    if isinstance(size, (list, tuple)):
        size = PixelSize(*size)
    if size.known or predictor.pixel_size_um is None:
        print(describe(size, predictor.pixel_size_um), file=sys.stderr)
    if not size.known:
        warn_unknown(predictor.pixel_size_um)
