"""Labels files of data sets: where a folder keeps them by convention, and how they are parsed."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.labels import LabelSet

_HEADER_IDS = {"id", "sample", "sample_id", "key", "image", "name"}


def find_labels_file(root: Path, format: str) -> Path | None:
    """The labels file a data folder carries by convention, or None."""
    if format == "kaggle-hpa":
        candidates = [root / "train.csv"]
    elif format == "npz":
        candidates = [root / "labels.txt", root / "labels.csv"]
        others = sorted(p for p in root.glob("*.txt") if p.is_file())
        if len(others) == 1:
            candidates.append(others[0])
    else:
        candidates = [root / "labels.csv", root / "labels.txt"]
    return next((p for p in candidates if p.is_file()), None)


def read_labels_file(path: Path, format: str, label_set: LabelSet) -> tuple[dict, dict]:
    """Parse a labels file into ({id: label indices}, {id: reason it could not be parsed}).

    ``channels`` / ``kaggle-hpa``: CSV ``id,labels`` (``Id,Target``) with an optional header; labels are
    class names separated by ';' or class indices separated by spaces. ``npz``: lines
    ``key, Class name, Class name`` (the authors' format).
    """
    labels: dict[str, tuple[int, ...]] = {}
    problems: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProtlocError(f"labels file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ProtlocError(f"cannot read labels file {path}: {exc.strerror or exc}") from None

    if format == "npz":
        rows = [[part.strip() for part in line.split(",")] for line in text.splitlines() if line.strip()]
        cells = [(row[0], ";".join(part for part in row[1:] if part)) for row in rows]
    else:
        rows = [row for row in csv.reader(text.splitlines()) if row and any(c.strip() for c in row)]
        if rows and rows[0][0].strip().lower() in _HEADER_IDS:
            rows = rows[1:]
        cells = []
        for row in rows:
            rest = [c.strip() for c in row[1:] if c.strip()]
            # "id,Name,Name" (unquoted extra columns) reads as names; "id,0 5" as indices.
            cells.append((row[0].strip(), ";".join(rest) if len(rest) > 1 else (rest[0] if rest else "")))

    seen: Counter = Counter(sample_id for sample_id, _ in cells)
    for sample_id, cell in cells:
        if not sample_id:
            continue
        if seen[sample_id] > 1:
            problems[sample_id] = f"{seen[sample_id]} label rows in {path.name}"
            continue
        try:
            labels[sample_id] = label_set.parse(cell)
        except ProtlocError as exc:
            problems[sample_id] = f"labels: {exc}"
    return labels, problems
