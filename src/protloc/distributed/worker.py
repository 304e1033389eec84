"""What runs inside a Dask worker: its model, its threads, its GPU, and one prediction shard.

A worker process loads each model once (``cached_model``, keyed by the model file and device) and keeps
it for every later shard. It runs one shard at a time with all the cores the worker was given as torch
threads (``worker.nthreads``: a LocalCluster's share, ``dask worker --nthreads``, a job's ``cores``):
one forward pass using every core is faster than several passes fighting over them, and memory stays at
one model and one image. A shard's rows go to its own Parquet part, written under a temporary name and
renamed, so a part either exists whole or not at all: a shard run twice (its worker died and the
scheduler ran it again elsewhere, or a resumed client submitted it again) replaces its part with the
same rows.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from protloc.distributed.inputs import WorkerCannotRead, worker_sources
from protloc.errors import ProtlocError

THREADS_ENV = "PROTLOC_TORCH_THREADS"  # overrides the worker's thread count for torch
_MODELS: dict = {}
_ONE_SHARD_AT_A_TIME = threading.Lock()


@dataclass
class ShardJob:
    shard: int
    entries: list  # protloc.data.formats.SampleEntry
    part: str  # the part file this shard writes
    model: str  # resolved model file (every worker loads the same file)
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # the run's per-image options (predict or cells)
    max_pixels: int | None = None  # the client's --max-pixels, for the readers of this shard


def worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return f"{worker.name} ({worker.address})" if str(worker.name) != worker.address else worker.address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def pin_device(requested: str, worker: str, device_count: int, visible: str | None = None) -> str:
    """The device of this worker: one worker per GPU. ``cuda`` unpinned -> the worker's own GPU:
    ``cuda:0`` when the batch system or the user left it one visible GPU (``CUDA_VISIBLE_DEVICES=3``),
    else GPU (worker number mod GPUs seen), the number being the trailing digits of its name (a
    LocalCluster's 0..N-1, dask-jobqueue's ``SLURMCluster-7``, ``dask worker --name gpu2``).
    ``cuda:N`` and ``cpu`` are kept as given."""
    if requested != "cuda":
        return requested
    if device_count < 1:
        raise ProtlocError(f"--device cuda: worker {worker} sees no GPU")
    if visible is not None and visible.strip() and len(visible.split(",")) == 1:
        return "cuda:0"
    match = re.search(r"(\d+)\D*$", str(worker))
    return f"cuda:{int(match.group(1)) % device_count if match else 0}"


def worker_device(requested: str) -> str:
    if requested != "cuda":
        return requested
    import torch

    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        name = "0"
    return pin_device(requested, name, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def cached_model(model: str, device: str, precision: str = "fp32"):
    """The predictor of ``model`` on ``device`` at ``precision``, loaded once per worker process."""
    key = (model, device, precision)
    if key not in _MODELS:
        from protloc.inference.predictor import load_model

        _MODELS[key] = load_model(model, device=device, precision=precision)
    return _MODELS[key]


def _use_worker_threads() -> None:
    import torch

    threads = os.environ.get(THREADS_ENV)
    if not threads:
        try:
            from distributed import get_worker

            threads = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            return
    if int(threads) != torch.get_num_threads():
        torch.set_num_threads(int(threads))


def _prepare(job: ShardJob) -> str:
    _use_worker_threads()
    return worker_name()


def readable_entry(entry, worker: str):
    """The entry with the sources this worker reads (URLs fetched into its cache). A path the worker
    does not see is not a bad image but a bad cluster: WorkerCannotRead stops the run."""
    return replace(entry, sources=worker_sources(entry.sources, worker))


def read_entry(entry, worker: str, pixel_size: float | None = None, max_pixels: int | None = None):
    """(``protloc.data.formats.Sample``, None) or (None, the reason the sample cannot be used), as
    ``protloc predict``'s reader says it."""
    from protloc.data.formats import read

    readable = readable_entry(entry, worker)
    try:
        return read(readable, max_pixels=max_pixels, pixel_size=pixel_size), None
    except WorkerCannotRead:
        raise
    except ProtlocError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder's own exception type: reported with the sample, as predict does
        return None, f"{type(exc).__name__}: {exc}"


def write_part_atomically(path: Path, write) -> None:
    """``write(tmp)`` then rename: the part is whole or absent; two runs of one shard never mix."""
    from protloc.files import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)


def predict_shard(job: ShardJob) -> dict:
    """One shard of ``protloc predict``: every sample's probabilities into the shard's Parquet part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from protloc.data.pixel_size import scale_factor
    from protloc.inference.maps import write_maps

    with _ONE_SHARD_AT_A_TIME:
        start = time.perf_counter()
        worker = _prepare(job)
        options = job.options
        if options.get("compile_selu"):
            from protloc.inference.gapnet_pl_fast import use_compiled_selu

            use_compiled_selu()
        predictor = cached_model(job.model, worker_device(job.device), options.get("precision", "fp32"))
        precision = predictor.resolved_precision  # auto resolved on this worker's device: its rows say it
        if options.get("patch_size"):
            predictor.patch_size = int(options["patch_size"])
        rows = {name: [] for name in part_schema().names}
        first_size = None
        for entry in job.entries:
            sample, failure = read_entry(entry, worker, options.get("pixel_size"), job.max_pixels)
            if failure is not None:
                for name in rows:
                    rows[name].append(None)
                rows["id"][-1], rows["failure"][-1] = entry.id, failure
                continue
            image, size = sample.image, sample.pixel_size
            first_size = first_size or size
            probs = predictor.predict_proba(image, whole_image=options.get("whole_image", False),
                                            tta=options.get("tta", False), batch_size=options.get("batch_size", 4),
                                            pixel_size_um=size.um)
            predicted = predictor.predicted(probs)
            if options.get("maps_dir"):
                write_maps(predictor, entry.id, image, probs, predicted, Path(options["maps_dir"]),
                           sources=entry.sources)
            for name, value in (("id", entry.id), ("probs", [float(p) for p in probs]), ("pixel_size_um", size.um),
                                ("scale", float(scale_factor(size.um, predictor.pixel_size_um))),
                                ("precision", precision), ("predicted", list(predicted)), ("failure", None)):
                rows[name].append(value)
        table = pa.table(rows, schema=part_schema())
        write_part_atomically(Path(job.part), lambda tmp: pq.write_table(table, tmp))
        return {"shard": job.shard, "images": len(job.entries), "worker": worker,
                "size": None if first_size is None else [first_size.um, first_size.source],
                "seconds": time.perf_counter() - start}


def part_schema():
    """A predict part: one row per sample, probabilities as a list (the classes are the model's), or the
    reason the sample could not be used."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("probs", pa.list_(pa.float64())), ("pixel_size_um", pa.float64()),
                      ("scale", pa.float64()), ("precision", pa.string()), ("predicted", pa.list_(pa.string())),
                      ("failure", pa.string())])
