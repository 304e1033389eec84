"""Prediction over many images: streamed, resumable, split across ranks under torchrun.

Images are decoded by DataLoader workers while the network runs; results are appended to the output
file row by row and flushed, so an interrupted run resumes by skipping the ids already written.
Rows go to a journal beside the output (``protloc.inference.journal``: CSV, or JSON Lines for JSON
Lines and Parquet) that becomes the output only when every image is done; the journal is then gone.
Inputs that could not be read are listed with their reason in ``<out stem>.errors.csv``; a run where
every input was skipped is an error.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.inference import journal
from protloc.files import atomic_open, atomic_write_text, spreadsheet_safe

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass
class BatchResult:
    predicted: int = 0
    already_done: int = 0
    failures: list[dict] = field(default_factory=list)
    out: Path | None = None
    errors_file: Path | None = None


def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ProtlocError(
            f"cannot tell the output format of {path.name}: use .csv, .jsonl or .parquet"
        ) from None


def prediction_columns(classes) -> list[str]:
    """The columns of a prediction row, in order (CSV header, JSON keys, Parquet columns)."""
    return ["id", *classes, "pixel_size_um", "scale", "precision", "predicted"]


def open_journal(out: Path, columns: list[str]) -> tuple["RowWriter", str]:
    """(the row writer of ``out``'s journal, the output's format) for a single writer of the whole
    output (the distributed merge): locked, holding a finished ``out``'s rows and knowing their ids
    (CSV ids as written: ``spreadsheet_safe``). ``journal.finish`` turns it into ``out``."""
    fmt = output_format(out)
    row_format = "csv" if fmt == "csv" else "jsonl"
    return RowWriter(journal.journal_path(out, fmt), row_format, columns, out=out, out_format=fmt), fmt


class RowWriter:
    """Appends prediction rows to the run's journal (CSV or JSON Lines), fsynced per row; knows the ids
    already written. ``out``: the finished output whose rows a new journal starts from."""

    def __init__(self, path: Path, fmt: str, columns: list[str], out: Path | None = None,
                 out_format: str | None = None):
        self.path, self.fmt, self.columns = path, fmt, columns
        for target in (path, out):
            if target is not None and target.is_dir():
                raise ProtlocError(f"{target} is a folder: --out takes a file name (.csv, .jsonl or .parquet)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProtlocError(f"cannot create the folder of {path}: {exc.strerror}") from None
        existed = path.exists()
        self._cut_at: int | None = None  # where a failed write started
        self._lock = self._lock_against_a_second_run()
        try:
            # Checked from its first line, then read line by line: never whole into memory.
            journal.check_header(path, fmt, columns)
            if out is not None and out != path:
                journal.adopt_finished_output(out, path, out_format or fmt, columns)
            # Read the ids of the complete rows first (refusing a line that is not text before any
            # change), then drop a partial last line: a row cut inside its last field, or missing only
            # its newline, must not count as done.
            self.done: set[str] = journal.read_ids(path, fmt, columns)
            journal.truncate_partial_last_line(path)
            self.handle = open(path, "a", newline="", encoding="utf-8")
            if fmt == "csv":
                self.csv = csv.writer(self.handle)
                if path.stat().st_size == 0:
                    self.csv.writerow(columns)
                    self._sync()
        except BaseException as exc:
            self._lock.close()
            if not existed and path.exists() and not journal.has_rows(path, fmt):
                path.unlink()  # no empty journal (or one holding only its header) left behind
            if isinstance(exc, OSError):
                raise ProtlocError(f"cannot write {path}: {exc.strerror or exc}") from None
            raise

    def _lock_against_a_second_run(self):
        """Two runs appending to one file would each predict every image once: duplicated rows. The
        lock is the kernel's (flock), so a run killed with -9 leaves none behind."""
        lock = open(self.path, "ab")
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one run per output file is then the user's to keep
            return lock
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ProtlocError(f"another protloc predict is writing {self.path}: wait for it to finish "
                               "(it resumes where it stopped if killed), or choose another --out") from None
        return lock

    def _sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def sync(self) -> None:
        """On disk: what rows written with ``sync=False`` are (the distributed merge's one fsync)."""
        self._sync()

    def write(self, sample_id: str, probs: np.ndarray, predicted: list[str], classes: list[str],
              pixel_size_um: float | None = None, scale: float = 1.0, precision: str = "fp32",
              sync: bool = True) -> None:
        """One row, flushed; ``sync``: on disk before returning (False: the caller syncs once, as the
        distributed merge does after its last row, its parts being kept until the output is finished)."""
        start = os.fstat(self.handle.fileno()).st_size  # every row before is flushed
        try:
            if self.fmt == "csv":
                self.csv.writerow([spreadsheet_safe(sample_id), *(f"{p:.6f}" for p in probs),
                                   "" if pixel_size_um is None else f"{pixel_size_um:g}", f"{scale:g}", precision,
                                   ";".join(predicted)])
            else:
                row = {"id": sample_id, **{c: round(float(p), 6) for c, p in zip(classes, probs)},
                       "pixel_size_um": pixel_size_um, "scale": round(float(scale), 6), "precision": precision,
                       "predicted": predicted}
                self.handle.write(json.dumps(row) + "\n")
            self._sync() if sync else self.handle.flush()
        except OSError as exc:  # a full disk, an I/O error: the rows before are kept, this one is not
            self._cut_at = start  # on close, after whatever of the row is still buffered went out
            kept = (f"the {len(self.done)} finished row(s) are kept there: free space and rerun the same command "
                    "to resume" if self.done else "nothing was finished")
            raise ProtlocError(f"cannot write {self.path}: {exc.strerror or exc}; {kept}") from None
        self.done.add(sample_id)

    @property
    def lock_fd(self) -> int:
        return self._lock.fileno()

    def close(self) -> None:
        """Close the journal; one with no row (only a CSV header, or nothing) is removed, not left behind."""
        try:
            self.handle.close()
        except OSError:
            pass  # the write that failed already said why
        if self._cut_at is not None:
            try:
                os.truncate(self.path, self._cut_at)
            except OSError:
                pass  # the resume drops a cut last row all the same
        if not journal.has_rows(self.path, self.fmt):
            self.path.unlink(missing_ok=True)
        self._lock.close()


class _ImageDataset:
    """Reads one input per item (image, pixel size, channel names: ``protloc.data.formats.read``); a
    failure is returned as its reason instead of raising."""

    def __init__(self, entries, pixel_size: float | None = None, max_pixels: int | None = None):
        self.entries = entries
        self.pixel_size = pixel_size
        self.max_pixels = max_pixels  # travels with the dataset into the decoding worker processes

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        from protloc.data.formats import read

        entry = self.entries[i]
        try:
            return entry.id, read(entry, max_pixels=self.max_pixels, pixel_size=self.pixel_size), None
        except ProtlocError as exc:
            return entry.id, None, str(exc)
        except Exception as exc:  # a decoder's own exception type: report it, keep going
            return entry.id, None, f"{type(exc).__name__}: {exc}"


def _close_in_worker(fd: int, main_pid: int, _worker_id: int) -> None:
    """A decoding worker inherits the output's lock; were the main process killed, the lock would live
    on in it and refuse the resume. And a worker outlives a main process killed with -9 (blocked on its
    queue, ~170 MB each, for good): on Linux it asks the kernel to kill it with its parent."""
    os.close(fd)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != main_pid:  # the main process died before the request took effect
            os._exit(0)


def _first(batch):
    return batch[0]


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_batch_prediction(
    inputs: list[str],
    model: str,
    out: str | Path,
    *,
    whole_image: bool = False,
    tta: bool = False,
    maps_dir: str | Path | None = None,
    patch_size: int | None = None,
    batch_size: int = 4,
    workers: int = 2,
    device: str = "cpu",
    input_format: str | None = None,
    progress: bool = True,
    precision: str = "fp32",
    pixel_size: float | None = None,
    max_pixels: int | None = None,
    reader_options: dict | None = None,  # hook (issue 14): OME --channels/--projection
) -> BatchResult:
    """Predict every input into ``out``. Each image is brought to the model's pixel size first: its
    own is ``pixel_size`` (µm per pixel) when given, else what its files state or its layout implies
    (``protloc.data.pixel_size``); one line on stderr says what was done, and each row records the
    input's pixel size and the resize factor (``pixel_size_um``, ``scale``). ``max_pixels`` is the readers'
    pixel limit (None: protloc.data.limits.DEFAULT_MAX_PIXELS)."""
    import torch
    from tqdm import tqdm

    from protloc.data.formats import discover
    from protloc.data.pixel_size import check_pixel_size, describe, scale_factor, warn_unknown
    from protloc.inference.maps import write_maps
    from protloc.inference.predictor import load_model

    out = Path(out)
    fmt = output_format(out)
    predictor = load_model(model, device=device, precision=precision)
    precision = predictor.resolved_precision  # auto resolved once; every row records what ran
    if patch_size:
        predictor.patch_size = int(patch_size)
    if whole_image and not predictor.fully_convolutional:
        raise ProtlocError(f"{predictor.model_name} has fixed-size dense layers: --whole-image needs GapNet-PL")
    entries = discover(list(inputs), format=input_format, reader_options=reader_options)
    if not entries:
        raise ProtlocError("no images found in the inputs")

    rank, world = _rank_and_world()
    final_out = out
    base = journal.journal_path(out, fmt)  # nothing under --out until the run is complete
    part = base.with_name(f"{base.name}.rank{rank}") if world > 1 else base
    columns = prediction_columns(predictor.classes)
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    said = warned = False
    row_format = "csv" if fmt == "csv" else "jsonl"
    sync = None
    if world > 1:
        from protloc.inference.ranks import RankSync

        sync = RankSync(part, rank, world)
    # Under torchrun each rank keeps its own part; a finished output is adopted by a single run only.
    writer = RowWriter(part, row_format, columns, out=None if world > 1 else out, out_format=fmt)
    my_entries = [e for i, e in enumerate(entries) if i % world == rank]
    written_as = spreadsheet_safe if row_format == "csv" else str  # a CSV holds its ids defused
    todo = [e for e in my_entries if written_as(e.id) not in writer.done]
    result = BatchResult(already_done=len(my_entries) - len(todo), out=final_out)
    predictor.fields = len(todo)  # a long run compiles GapNet-PL's SELU (compile_selu_worth)
    sources_by_id = {e.id: e.sources for e in todo}  # hook (issue 14): maps of OME-Zarr inputs go back as labels

    loader = torch.utils.data.DataLoader(
        _ImageDataset(todo, pixel_size, max_pixels), batch_size=1, collate_fn=_first, num_workers=workers if len(todo) > 1 else 0,
        worker_init_fn=partial(_close_in_worker, writer.lock_fd, os.getpid()),
        prefetch_factor=2 if workers and len(todo) > 1 else None,
    )
    bar = tqdm(loader, total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    try:
        for sample_id, sample, failure in bar:
            if failure is not None:
                result.failures.append({"id": sample_id, "reason": failure})
                continue
            image, size = sample.image, sample.pixel_size
            if not said:  # one line per run; an unknown pixel size is the warning below instead
                if size.known or predictor.pixel_size_um is None:
                    print(describe(size, predictor.pixel_size_um), file=sys.stderr)
                said = True
            if not size.known and not warned:
                warn_unknown(predictor.pixel_size_um)
                warned = True
            probs = predictor.predict_proba(image, whole_image=whole_image, tta=tta, batch_size=batch_size,
                                            pixel_size_um=size.um)
            predicted = predictor.predicted(probs)
            if maps_dir is not None:
                write_maps(predictor, sample_id, image, probs, predicted, Path(maps_dir),
                           sources=sources_by_id.get(sample_id))  # hook (issue 14): OME-Zarr labels
            writer.write(sample_id, probs, predicted, predictor.classes, size.um,
                         scale_factor(size.um, predictor.pixel_size_um), precision)
            result.predicted += 1
    finally:
        writer.close()
        if sync is not None:
            sync.close()
    errors_file = final_out.with_name(final_out.stem + ".errors.csv" + (f".rank{rank}" if world > 1 else ""))
    if result.failures:
        result.errors_file = errors_file
        write_skipped(errors_file, result.failures)
    else:  # an earlier run's list: its inputs were tried again and read this time
        errors_file.unlink(missing_ok=True)
    if world == 1 and not result.predicted and not result.already_done:
        raise ProtlocError(nothing_predicted(result))
    if sync is not None:
        sync.finish()
        if rank == 0:
            parts = sync.wait_for_all()
            _merge_parts(parts, base, fmt, columns)
            journal.finish(base, final_out, fmt, columns)
            for done_part in parts:
                done_part.unlink(missing_ok=True)
            sync.cleanup()
    else:
        journal.finish(base, final_out, fmt, columns)
    return result


def write_skipped(path: Path, failures: list[dict]) -> None:
    """The skipped inputs and why, one CSV row each (id, reason), written whole or not at all."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "reason"])
    writer.writerows([spreadsheet_safe(f["id"]), f["reason"]] for f in failures)
    try:
        atomic_write_text(path, buffer.getvalue())
    except OSError as exc:
        raise ProtlocError(f"cannot write {path}: {exc.strerror or exc}") from None


def nothing_predicted(result: BatchResult) -> str:
    first = result.failures[0] if result.failures else None
    why = f" (first: {first['id']}: {first['reason']})" if first else ""
    where = f"; every reason in {result.errors_file}" if result.errors_file else ""
    return f"nothing was predicted: all {len(result.failures)} input(s) were skipped{why}{where}"


def _merge_parts(parts: list[Path], merged: Path, fmt: str, columns: list[str]) -> None:
    """Rank 0: the ranks' rows in one journal, written atomically."""
    try:
        with atomic_open(merged, "w", newline="", encoding="utf-8") as target:
            if fmt == "csv":
                target.write(",".join(columns) + "\n")
            for part in parts:
                if not part.exists():  # a rank with nothing to write removed its empty part
                    continue
                lines = journal.complete_lines(part)
                if fmt == "csv":
                    next(lines, None)
                target.writelines(lines)
    except OSError as exc:
        raise ProtlocError(f"cannot write {merged}: {exc.strerror or exc}; the ranks' rows are kept: "
                           "free space and rerun the same command") from None
