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
        self.done: set[str] = set()
        if path.exists() and path.stat().st_size > 0:
            self.done = self._read_ids()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_partial_last_line()
        self.handle = open(path, "a", newline="")
        if fmt == "csv":
            self.csv = csv.writer(self.handle)
            if not self.done and path.stat().st_size == 0:
                self.csv.writerow(columns)
                self.handle.flush()

    def _read_ids(self) -> set[str]:
        ids: set[str] = set()
        with open(self.path, newline="") as handle:
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
        # A crash mid-write can leave a partial last line; drop it so the file stays parseable.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)

    def write(self, sample_id: str, probs: np.ndarray, predicted: list[str], classes: list[str]) -> None:
        if self.fmt == "csv":
            self.csv.writerow([sample_id, *(f"{p:.6f}" for p in probs), ";".join(predicted)])
        else:
            row = {"id": sample_id, **{c: round(float(p), 6) for c, p in zip(classes, probs)},
                   "predicted": predicted}
            self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.done.add(sample_id)

    def close(self) -> None:
        self.handle.close()


class _ImageDataset:
    """Decodes one input per item; a failure is returned as its reason instead of raising."""

    def __init__(self, entries):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        from protloc.data.readers import load_entry

        entry = self.entries[i]
        try:
            return entry.id, load_entry(entry), None
        except ProtlocError as exc:
            return entry.id, None, str(exc)
        except Exception as exc:  # a decoder's own exception type: report it, keep going
            return entry.id, None, f"{type(exc).__name__}: {exc}"


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
) -> BatchResult:
    import torch
    from tqdm import tqdm

    from protloc.data.readers import discover_inputs
    from protloc.inference.maps import write_maps
    from protloc.inference.predictor import load_model

    out = Path(out)
    fmt = output_format(out)
    predictor = load_model(model, device=device)
    if patch_size:
        predictor.patch_size = int(patch_size)
    if whole_image and not predictor.fully_convolutional:
        raise ProtlocError(f"{predictor.model_name} has fixed-size dense layers: --whole-image needs GapNet-PL")
    entries = discover_inputs(list(inputs), format=input_format)
    if not entries:
        raise ProtlocError("no images found in the inputs")

    rank, world = _rank_and_world()
    final_out = out
    journal = out.with_name(out.name + ".journal.jsonl") if fmt == "parquet" else out
    if world > 1:
        journal = journal.with_name(f"{journal.name}.rank{rank}")
    columns = ["id", *predictor.classes, "predicted"]
    row_format = "csv" if fmt == "csv" else "jsonl"
    writer = _RowWriter(journal, row_format, columns)
    my_entries = [e for i, e in enumerate(entries) if i % world == rank]
    todo = [e for e in my_entries if e.id not in writer.done]
    result = BatchResult(already_done=len(my_entries) - len(todo), out=final_out)

    loader = torch.utils.data.DataLoader(
        _ImageDataset(todo), batch_size=1, collate_fn=_first, num_workers=workers if len(todo) > 1 else 0,
        prefetch_factor=2 if workers and len(todo) > 1 else None,
    )
    bar = tqdm(loader, total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    try:
        for sample_id, image, failure in bar:
            if failure is not None:
                result.failures.append({"id": sample_id, "reason": failure})
                continue
            probs = predictor.predict_proba(image, whole_image=whole_image, tta=tta, batch_size=batch_size,
                                            precision=precision)
            predicted = predictor.predicted(probs)
            if maps_dir is not None:
                write_maps(predictor, sample_id, image, probs, predicted, Path(maps_dir))
            writer.write(sample_id, probs, predicted, predictor.classes)
            result.predicted += 1
    finally:
        writer.close()
    if result.failures:
        result.errors_file = final_out.with_name(final_out.stem + ".errors.csv" + (f".rank{rank}" if world > 1 else ""))
        with open(result.errors_file, "w", newline="") as handle:
            csv.writer(handle).writerows([["id", "reason"], *[[f["id"], f["reason"]] for f in result.failures]])
    if world > 1:
        _merge_ranks(final_out, journal, fmt, columns, rank, world)
    elif fmt == "parquet":
        _journal_to_parquet(journal, final_out, columns)
    return result


def _merge_ranks(out: Path, journal: Path, fmt: str, columns: list[str], rank: int, world: int) -> None:
    import torch.distributed as dist

    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        initialised_here = True
    dist.barrier()
    if rank == 0:
        parts = [journal.with_name(journal.name.rsplit(".rank", 1)[0] + f".rank{r}") for r in range(world)]
        merged = journal.with_name(journal.name.rsplit(".rank", 1)[0])
        with open(merged, "w", newline="") as target:
            if fmt == "csv":
                target.write(",".join(columns) + "\n")
            for part in parts:
                lines = part.read_text().splitlines(keepends=True)
                target.writelines(lines[1:] if fmt == "csv" else lines)
        if fmt == "parquet":
            _journal_to_parquet(merged, out, columns)
    dist.barrier()
    if initialised_here:
        dist.destroy_process_group()


def _journal_to_parquet(journal: Path, out: Path, columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    table = pa.table({c: [r[c] for r in rows] for c in columns[:-1]} | {"predicted": [";".join(r["predicted"]) for r in rows]})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
