"""The journal of a ``protloc predict`` run: rows appended and fsynced one by one beside the output,
moved to the output's name only when the run is complete.

Nothing appears under ``--out`` until every image is done: a crash, a kill -9 or a full disk leaves
``<out>.journal.csv`` (or ``.jsonl``), which the same command resumes from. A finished output given
again as ``--out`` is first copied into a journal (its header checked, never read whole into
memory), so a run with more inputs adds to it and the old file stays whole until the new one
replaces it.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import shutil
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.files import atomic_path, move_into_place

_HEAD_BYTES = 1 << 16  # the longest first line (the CSV header) a prediction file of ours can have


def journal_path(out: Path, fmt: str) -> Path:
    """``<out>.journal.csv`` for CSV, ``<out>.journal.jsonl`` for JSON Lines and Parquet."""
    return out.with_name(f"{out.name}.journal.{'csv' if fmt == 'csv' else 'jsonl'}")


def _not_ours(path: Path, why: str) -> ProtlocError:
    return ProtlocError(f"{path} exists and is not a protloc prediction file ({why}): choose another --out")


def check_header(path: Path, fmt: str, columns: list[str]) -> None:
    """Refuse an existing file that is not a prediction file of this model, from its first line alone
    (a 21 GB file given as --out was read whole into memory). ``fmt``: csv or jsonl."""
    if not path.exists():
        return
    if not path.is_file():
        raise _not_ours(path, "not a regular file")
    with open(path, "rb") as handle:
        block = handle.read(_HEAD_BYTES)
    end = block.find(b"\n")
    if end < 0 and len(block) == _HEAD_BYTES:
        raise _not_ours(path, f"no line ends in its first {_HEAD_BYTES} bytes")
    if end < 0:  # a first line a crash cut: the resume starts over (cut after the last newline)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(block, final=False)
        except UnicodeDecodeError:
            raise _not_ours(path, "not UTF-8 text") from None
        return
    try:
        first = block[: end + 1].decode("utf-8")
    except UnicodeDecodeError:
        raise _not_ours(path, "not UTF-8 text") from None
    if fmt == "csv":
        if next(csv.reader([first]), None) != columns:
            raise _not_ours(path, "other columns: another model or label set")
        return
    try:
        row = json.loads(first)
    except ValueError:
        raise _not_ours(path, "its first line is not JSON") from None
    if not isinstance(row, dict) or "id" not in row or any(c not in row for c in columns[1:-1]):
        raise _not_ours(path, "other fields: another model or label set")


def complete_lines(path: Path):
    """The file's lines that end in a newline, decoded (the last, unterminated one a crash cut is
    left out); a line that is not UTF-8 is refused before anything is changed."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _not_ours(path, f"line {number} is not UTF-8 text") from None


def read_ids(path: Path, fmt: str, columns: list[str]) -> set[str]:
    """The ids of the complete rows, streamed (the header checked first)."""
    ids: set[str] = set()
    if fmt == "csv":
        reader = csv.reader(complete_lines(path))
        if next(reader, None) not in (None, columns):
            raise _not_ours(path, "other columns: another model or label set")
        ids.update(row[0] for row in reader if len(row) == len(columns))
        return ids
    for line in complete_lines(path):
        try:
            ids.add(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def truncate_partial_last_line(path: Path) -> None:
    """Cut the file after its last newline: every row is written with its newline and fsynced, so
    anything after the last one is a row a crash interrupted."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = size  # look back in blocks for the last newline (large files are not read whole)
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                handle.truncate(start + found + 1)
                return
            end = start
        handle.truncate(0)


def adopt_finished_output(out: Path, journal: Path, fmt: str, columns: list[str]) -> None:
    """Start the journal from a finished output (a rerun, or a run with more inputs): its rows are
    kept, the output itself is only replaced when the new run completes. The journal is ours (locked)
    and empty when this is called."""
    if not out.exists() or journal.stat().st_size > 0:
        return
    if not out.is_file():
        raise _not_ours(out, "not a regular file")
    if out.stat().st_size == 0:
        return
    try:
        if fmt == "parquet":
            _parquet_rows_to_journal(out, journal, columns)
            return
        check_header(out, fmt, columns)
        with open(out, "rb") as source, open(journal, "ab") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
    except OSError as exc:
        with open(journal, "r+b") as handle:
            handle.truncate(0)
        raise ProtlocError(f"cannot copy {out.name} into {journal.name}: {exc.strerror or exc}") from None


def _parquet_rows_to_journal(out: Path, journal: Path, columns: list[str]) -> None:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(out)
    except Exception:  # pyarrow's own error types: not a Parquet file, a cut one
        raise _not_ours(out, "not a Parquet file") from None
    if parquet.schema_arrow.names != columns:
        raise _not_ours(out, "other columns: another model or label set")
    with open(journal, "a", encoding="utf-8") as target:
        for batch in parquet.iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                row["predicted"] = [c for c in (row["predicted"] or "").split(";") if c]
                target.write(json.dumps(row) + "\n")
        target.flush()
        os.fsync(target.fileno())


def has_rows(path: Path, fmt: str) -> bool:
    """Whether the journal holds more than a CSV header (an empty one is removed, not left behind)."""
    try:
        with open(path, "rb") as handle:
            lines = 0
            for _ in handle:
                lines += 1
                if lines > (1 if fmt == "csv" else 0):
                    return True
    except OSError:
        return False
    return False


def finish(journal: Path, out: Path, fmt: str, columns: list[str]) -> None:
    """The complete journal to the output: renamed (CSV, JSON Lines) or converted (Parquet, through a
    temporary file); the journal is gone afterwards. A failure leaves the journal, no output."""
    if fmt != "parquet":
        move_into_place(journal, out)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in complete_lines(journal) if line.strip()]
    table = pa.table({c: [r[c] for r in rows] for c in columns[:-1]} | {"predicted": [";".join(r["predicted"]) for r in rows]})
    try:
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    except OSError as exc:
        raise ProtlocError(f"cannot write {out.name}: {exc.strerror or exc}; the rows are kept in {journal.name}: "
                           "free space and rerun the same command") from None
    journal.unlink()
