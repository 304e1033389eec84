"""Prediction over many images: streamed, resumable, split across ranks under torchrun.

Images are decoded by DataLoader workers while the network runs; results are appended to the output
file row by row and flushed, so an interrupted run resumes by skipping the ids already written.
CSV and JSON Lines are appended in place; Parquet cannot be appended, so rows go to a JSON Lines
journal beside it that is converted when the run finishes.
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


class _RowWriter:
    """Appends prediction rows to CSV or JSON Lines, flushed per row; knows the ids already written."""

    def __init__(self, path: Path, fmt: str, columns: list[str]):
        self.path, self.fmt, self.columns = path, fmt, columns
        if path.is_dir():
            raise ProtlocError(f"{path} is a folder: --out takes a file name (.csv, .jsonl or .parquet)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProtlocError(f"cannot create the folder of {path}: {exc.strerror}") from None
        self._lock = self._lock_against_a_second_run()
        try:
            self._refuse_foreign_file()
            # First drop a partial last line (a crash mid-write), then read the ids: a row cut inside its
            # last field, or missing only its newline, must not count as done and then be deleted.
            self._truncate_partial_last_line()
            self.done: set[str] = self._read_ids() if path.stat().st_size > 0 else set()
        except BaseException:
            self._lock.close()
            raise
        self.handle = open(path, "a", newline="", encoding="utf-8")
        if fmt == "csv":
            self.csv = csv.writer(self.handle)
            if path.stat().st_size == 0:
                self.csv.writerow(columns)
                self.handle.flush()

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

    def _refuse_foreign_file(self) -> None:
        """A file we wrote is UTF-8 up to its last newline (after it, a crash may have cut a character);
        refuse anything else before the cut below changes a byte of it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        try:
            data[: data.rfind(b"\n") + 1].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtlocError(f"{self.path} exists and is not a protloc prediction file (not UTF-8 text): "
                               "choose another --out") from None

    def _read_ids(self) -> set[str]:
        ids: set[str] = set()
        with open(self.path, newline="", encoding="utf-8") as handle:
            if self.fmt == "csv":
                reader = csv.reader(handle)
                header = next(reader, None)
                if header != self.columns:
                    raise ProtlocError(
                        f"{self.path} exists with other columns (another model or label set): choose another --out"
                    )
                for row in reader:
                    if len(row) == len(self.columns):
                        ids.add(row[0])
            else:
                for line in handle:
                    try:
                        ids.add(json.loads(line)["id"])
                    except (ValueError, KeyError, TypeError):
                        continue
        return ids

    def _truncate_partial_last_line(self) -> None:
        """Cut the file after its last newline: every row is written with its newline and fsynced,
        so anything after the last one is a row a crash interrupted."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            # Look back in blocks for the last newline (files of millions of rows are not read whole).
            end = size
            while end > 0:
                start = max(0, end - (1 << 16))
                handle.seek(start)
                found = handle.read(end - start).rfind(b"\n")
                if found >= 0:
                    handle.truncate(start + found + 1)
                    return
                end = start
            handle.truncate(0)

    def write(self, sample_id: str, probs: np.ndarray, predicted: list[str], classes: list[str],
              pixel_size_um: float | None = None, scale: float = 1.0, sync: bool = True) -> None:
        """One row, flushed; ``sync``: on disk before returning (False: the caller syncs once, as the
        distributed merge does after its last row, its parts being kept until then)."""
        if self.fmt == "csv":
            self.csv.writerow([sample_id, *(f"{p:.6f}" for p in probs), "" if pixel_size_um is None else
                               f"{pixel_size_um:g}", f"{scale:g}", ";".join(predicted)])
        else:
            row = {"id": sample_id, **{c: round(float(p), 6) for c, p in zip(classes, probs)},
                   "pixel_size_um": pixel_size_um, "scale": round(float(scale), 6), "predicted": predicted}
            self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if sync:
            os.fsync(self.handle.fileno())
        self.done.add(sample_id)

    @property
    def lock_fd(self) -> int:
        return self._lock.fileno()

    def close(self) -> None:
        self.handle.close()
        self._lock.close()


class _ImageDataset:
    """Decodes one input per item; a failure is returned as its reason instead of raising."""

    def __init__(self, entries):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        from protloc.data.inputs import load_entry

        entry = self.entries[i]
        try:
            return entry.id, load_entry(entry), None
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
    reader_options: dict | None = None,  # hook (issue 14): OME --channels/--projection
) -> BatchResult:
    """Predict every input into ``out``. Each image is brought to the model's pixel size first: its
    own is ``pixel_size`` (µm per pixel) when given, else what its files state or its layout implies
    (``protloc.data.pixel_size``); one line on stderr says what was done, and each row records the
    input's pixel size and the resize factor (``pixel_size_um``, ``scale``)."""
    import torch
    from tqdm import tqdm

    from protloc.data.inputs import discover_inputs
    from protloc.data.pixel_size import check_pixel_size, describe, pixel_size_of, scale_factor, warn_unknown
    from protloc.inference.maps import write_maps
    from protloc.inference.predictor import load_model

    out = Path(out)
    fmt = output_format(out)
    predictor = load_model(model, device=device)
    if patch_size:
        predictor.patch_size = int(patch_size)
    if whole_image and not predictor.fully_convolutional:
        raise ProtlocError(f"{predictor.model_name} has fixed-size dense layers: --whole-image needs GapNet-PL")
    entries = discover_inputs(list(inputs), format=input_format, reader_options=reader_options)
    if not entries:
        raise ProtlocError("no images found in the inputs")

    rank, world = _rank_and_world()
    final_out = out
    journal = out.with_name(out.name + ".journal.jsonl") if fmt == "parquet" else out
    if world > 1:
        journal = journal.with_name(f"{journal.name}.rank{rank}")
    columns = ["id", *predictor.classes, "pixel_size_um", "scale", "predicted"]
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    entry_of = {e.id: e for e in entries}
    said = warned = False
    row_format = "csv" if fmt == "csv" else "jsonl"
    sync = None
    if world > 1:
        from protloc.inference.ranks import RankSync

        sync = RankSync(journal, rank, world)
    writer = _RowWriter(journal, row_format, columns)
    my_entries = [e for i, e in enumerate(entries) if i % world == rank]
    todo = [e for e in my_entries if e.id not in writer.done]
    result = BatchResult(already_done=len(my_entries) - len(todo), out=final_out)
    sources_by_id = {e.id: e.sources for e in todo}  # hook (issue 14): maps of OME-Zarr inputs go back as labels

    loader = torch.utils.data.DataLoader(
        _ImageDataset(todo), batch_size=1, collate_fn=_first, num_workers=workers if len(todo) > 1 else 0,
        worker_init_fn=partial(_close_in_worker, writer.lock_fd, os.getpid()),
        prefetch_factor=2 if workers and len(todo) > 1 else None,
    )
    bar = tqdm(loader, total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    try:
        for sample_id, image, failure in bar:
            if failure is not None:
                result.failures.append({"id": sample_id, "reason": failure})
                continue
            size = pixel_size_of(entry_of[sample_id].sources, *image.shape[-2:], override=pixel_size)
            if not said:  # one line per run; an unknown pixel size is the warning below instead
                if size.known or predictor.pixel_size_um is None:
                    print(describe(size, predictor.pixel_size_um), file=sys.stderr)
                said = True
            if not size.known and not warned:
                warn_unknown(predictor.pixel_size_um)
                warned = True
            probs = predictor.predict_proba(image, whole_image=whole_image, tta=tta, batch_size=batch_size,
                                            precision=precision, pixel_size_um=size.um)
            predicted = predictor.predicted(probs)
            if maps_dir is not None:
                write_maps(predictor, sample_id, image, probs, predicted, Path(maps_dir),
                           sources=sources_by_id.get(sample_id))  # hook (issue 14): OME-Zarr labels
            writer.write(sample_id, probs, predicted, predictor.classes, size.um,
                         scale_factor(size.um, predictor.pixel_size_um))
            result.predicted += 1
    finally:
        writer.close()
        if sync is not None:
            sync.close()
    if result.failures:
        result.errors_file = final_out.with_name(final_out.stem + ".errors.csv" + (f".rank{rank}" if world > 1 else ""))
        with open(result.errors_file, "w", newline="") as handle:
            csv.writer(handle).writerows([["id", "reason"], *[[f["id"], f["reason"]] for f in result.failures]])
    if sync is not None:
        sync.finish()
        if rank == 0:
            _merge_parts(sync.wait_for_all(), sync.base, final_out, fmt, columns)
            sync.cleanup()
    elif fmt == "parquet":
        _journal_to_parquet(journal, final_out, columns)
    return result


def _merge_parts(parts: list[Path], merged: Path, out: Path, fmt: str, columns: list[str]) -> None:
    """Rank 0: the ranks' rows in one file (the Parquet journal converted), written atomically."""
    tmp = merged.with_name(merged.name + ".tmp")
    with open(tmp, "w", newline="") as target:
        if fmt == "csv":
            target.write(",".join(columns) + "\n")
        for part in parts:
            lines = part.read_text().splitlines(keepends=True)
            target.writelines(lines[1:] if fmt == "csv" else lines)
    os.replace(tmp, merged)
    if fmt == "parquet":
        _journal_to_parquet(merged, out, columns)


def _journal_to_parquet(journal: Path, out: Path, columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    table = pa.table({c: [r[c] for r in rows] for c in columns[:-1]} | {"predicted": [";".join(r["predicted"]) for r in rows]})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
