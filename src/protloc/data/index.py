"""The scanned index of a data set: which samples are usable, where their files are, their labels.

``scan_dataset`` lists a data folder in one of the three formats, decodes every file of every sample
(the only way to find a truncated file) and keeps the samples that read; every other one is listed in
``excluded`` with its reason. The index is saved as JSON under ``<root>/.protloc/index.json`` so that
later steps (training, evaluation) use exactly the same samples.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.data import formats
from protloc.data.formats.listing import SampleEntry, list_dataset
from protloc.data.limits import DEFAULT_MAX_PIXELS, max_pixels
from protloc.data.pixel_size import UNKNOWN, PixelSize, check_pixel_size
from protloc.errors import DataError, ProtlocError, printable
from protloc.labels import LabelSet, load_label_set

INDEX_DIRNAME = ".protloc"
INDEX_VERSION = 1


def default_index_path(root: str | Path) -> Path:
    """Where ``protloc data scan ROOT`` saves the index: ROOT/.protloc/index.json."""
    return Path(root) / INDEX_DIRNAME / "index.json"


def default_splits_path(root: str | Path) -> Path:
    """Where ``protloc data scan ROOT`` saves the splits: ROOT/.protloc/splits.json."""
    return Path(root) / INDEX_DIRNAME / "splits.json"


def unwritable_reason(path: str | Path) -> str | None:
    """Why files cannot be created at ``path`` (its nearest existing ancestor is checked), or None.

    A folder whose permission bits allow nobody to write counts as read-only even for a user who could
    override them (root): shared, read-only data folders must stay untouched.
    """
    path = Path(path).expanduser().absolute()
    while not path.exists():
        if path.parent == path:
            return "no existing folder above it"
        path = path.parent
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not (mode & 0o222 and os.access(path, os.W_OK)):
        return "read-only"
    return None


def folder_is_writable(path: str | Path) -> bool:
    """Whether files may be created at ``path`` (see ``unwritable_reason``)."""
    return unwritable_reason(path) is None


@dataclass
class DatasetIndex:
    root: str
    format: str
    label_set: LabelSet
    samples: list[SampleEntry]
    excluded: list[dict] = field(default_factory=list)  # {"id": ..., "reason": ...}
    max_pixels: int = DEFAULT_MAX_PIXELS  # the pixel limit the scan applied

    def __post_init__(self) -> None:
        self._by_id = {entry.id: entry for entry in self.samples}

    def __len__(self) -> int:
        return len(self.samples)

    def ids(self) -> list[str]:
        return [entry.id for entry in self.samples]

    def entry(self, sample_id: str | SampleEntry) -> SampleEntry:
        if isinstance(sample_id, SampleEntry):
            return sample_id
        if len(self._by_id) != len(self.samples):  # samples list was changed after construction
            self._by_id = {entry.id: entry for entry in self.samples}
        try:
            return self._by_id[sample_id]
        except KeyError:
            raise ProtlocError(f"no sample {sample_id!r} in the index of {self.root}") from None

    def resolve(self, source: str) -> Path:
        """A source path as stored in the index, made usable (relative paths are relative to root)."""
        path = Path(source)
        return path if path.is_absolute() else Path(self.root) / path

    def load_image(self, entry_or_id: str | SampleEntry) -> np.ndarray:
        """The sample's raw image, float32 [4, H, W] in CHANNELS order. DataError if it cannot be read.

        The pixel limit is the larger of the one in force and the one the scan accepted the sample
        under: a data set scanned with a raised ``--max-pixels`` stays usable by every later step.
        """
        return self.read(entry_or_id).image

    def read(self, entry_or_id: str | SampleEntry, pixel_size: float | None = None) -> formats.Sample:
        """The sample with its pixel size and channel names (``protloc.data.formats.read``)."""
        entry = self.entry(entry_or_id)
        sources = formats.absolute_sources(entry.sources, self.root)
        return formats.read(sources, max_pixels=max(self.max_pixels, max_pixels()), pixel_size=pixel_size)

    def pixel_size(self, entry_or_id: str | SampleEntry) -> PixelSize:
        """The pixel size a sample's files state or its layout implies (UNKNOWN otherwise); reads it."""
        return self.read(entry_or_id).pixel_size

    def label_vector(self, entry_or_id: str | SampleEntry) -> np.ndarray:
        """Binary float32 vector over the label set's classes; ProtlocError if the sample is unlabeled."""
        entry = self.entry(entry_or_id)
        if entry.labels is None:
            raise ProtlocError(f"sample {entry.id!r} has no labels")
        return self.label_set.vector(entry.labels)

    def labelled(self) -> bool:
        return any(entry.labels is not None for entry in self.samples)

    def summary(self) -> dict:
        """The ``protloc data scan --json`` dict."""
        shapes = Counter(f"{entry.height}x{entry.width}" for entry in self.samples)
        counts = Counter()
        labelled = [entry for entry in self.samples if entry.labels is not None]
        for entry in labelled:
            counts.update(entry.labels)
        multi = sum(1 for entry in labelled if len(entry.labels) > 1)
        return {
            "valid": len(self.samples),
            "excluded": [dict(item) for item in self.excluded],
            "shapes": dict(sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))),
            "class_counts": {name: int(counts.get(i, 0)) for i, name in enumerate(self.label_set.classes)}
            if labelled
            else {},
            "multi_label_fraction": round(multi / len(labelled), 6) if labelled else 0.0,
        }

    def to_json(self) -> dict:
        return {
            "protloc_index": INDEX_VERSION,
            "root": str(self.root),
            "format": self.format,
            "label_set": self.label_set.to_json(),
            "samples": [entry.to_json() for entry in self.samples],
            "excluded": [dict(item) for item in self.excluded],
            "max_pixels": int(self.max_pixels),
        }

    def save(self, path: str | Path) -> None:
        """Write the index as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        # Also remember the root relative to the index file, so a data folder moved together with its
        # .protloc/ keeps working.
        data["root_relative_to_index"] = os.path.relpath(Path(self.root).resolve(), path.parent.resolve())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> DatasetIndex:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("protloc_index") is None:
                raise ValueError("not a protloc index")
            root = Path(data["root"])
            relative = data.get("root_relative_to_index")
            if not root.is_dir() and relative is not None:
                root = (path.parent / relative).resolve()
            label_set = LabelSet(name=data["label_set"]["name"], classes=tuple(data["label_set"]["classes"]))
            samples = [SampleEntry.from_json(item) for item in data["samples"]]
            excluded = [dict(item) for item in data.get("excluded", [])]
            return cls(root=str(root), format=str(data["format"]), label_set=label_set, samples=samples,
                       excluded=excluded, max_pixels=int(data.get("max_pixels", DEFAULT_MAX_PIXELS)))
        except FileNotFoundError:
            raise ProtlocError(f"no index file {path}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtlocError(f"{path} is not a protloc index ({exc})") from None


# ----------------------------------------------------------------------------------------------------
# Scanning


def _check_sample(root: Path, sources: dict[str, str]) -> tuple[int, int]:
    return formats.check(formats.absolute_sources(sources, root))


def _default_workers() -> int:
    # Decoders (libtiff codecs, zlib, libjpeg) release the GIL, so threads overlap decoding with file
    # reads even on few cores; more threads than cores only adds memory.
    return max(1, min(4, os.cpu_count() or 1))


def scan_dataset(
    root,
    format: str | None = None,
    labels=None,
    label_set=None,
    progress: bool = False,
    workers: int | None = None,
) -> DatasetIndex:
    """List, decode and index a data folder; never stops at the first bad sample.

    ``format`` None detects it (``detect_format``). ``labels`` is a labels file, or None to use the
    folder's own (labels.csv for channels, train.csv for kaggle-hpa, labels.txt / the only *.txt for
    npz) when there is one. ``label_set`` is a LabelSet, a built-in name or a JSON file; None means
    ``kaggle28`` for kaggle-hpa and ``hpa13`` otherwise. ProtlocError for a wrong path or a folder
    without any sample.
    """
    plan = list_dataset(root, format=format, labels=labels, label_set=label_set)
    root_path, format, labelset, label_map = plan.root, plan.format, plan.label_set, plan.labels
    excluded = {**plan.label_problems, **plan.problems}  # an image problem is the one to report
    to_read = [sample_id for sample_id in sorted(plan.sources) if sample_id not in excluded]

    shapes: dict[str, tuple[int, int]] = {}
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        futures = {sample_id: pool.submit(_check_sample, root_path, plan.sources[sample_id]) for sample_id in to_read}
        bar = tqdm(total=len(futures), desc="scanning", unit="sample", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        with bar:
            for sample_id, future in futures.items():
                try:
                    shapes[sample_id] = future.result()
                except DataError as exc:
                    excluded[sample_id] = str(exc)
                except Exception as exc:  # noqa: BLE001  absurd files (MemoryError, a decoder's bug) must not end the scan
                    excluded[sample_id] = printable(f"unreadable: {type(exc).__name__}: {exc}".splitlines()[0])
                bar.update(1)

    samples = []
    for sample_id in to_read:
        if sample_id in shapes:
            height, width = shapes[sample_id]
            sample_labels = label_map[sample_id] if label_map is not None else None
            samples.append(SampleEntry(sample_id, dict(plan.sources[sample_id]), sample_labels, height, width))

    excluded_list = [{"id": sample_id, "reason": excluded[sample_id]} for sample_id in sorted(excluded)]
    excluded_list += [{"id": sample_id, "reason": f"label row in {plan.labels_path.name} but no image files"}
                      for sample_id in plan.orphan_label_ids]
    return DatasetIndex(root=str(root_path), format=format, label_set=labelset, samples=samples,
                        excluded=excluded_list, max_pixels=max_pixels())


def open_dataset(path, format=None, labels=None, label_set=None, refresh: bool = False) -> DatasetIndex:
    """A data set's index: ``path`` is an index.json, or a data folder whose saved index is used (the
    folder is scanned and the index saved when there is none, when ``refresh`` is set, or when the saved
    one was made with another format, label set or pixel limit than asked for)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ProtlocError(f"{path}: give a data folder or an index.json")
        return DatasetIndex.load(path)
    if not path.is_dir():
        raise ProtlocError(f"no such folder: {path}")
    saved = default_index_path(path)
    if saved.is_file() and not refresh and labels is None:
        index = DatasetIndex.load(saved)
        wanted_set = None if label_set is None else load_label_set(label_set)
        if (format is None or format == index.format) and (wanted_set is None or wanted_set.classes ==
                                                           index.label_set.classes) and index.max_pixels == max_pixels():
            return index
    index = scan_dataset(path, format=format, labels=labels, label_set=label_set, progress=sys.stderr.isatty())
    if folder_is_writable(saved.parent):
        try:
            index.save(saved)
        except OSError:
            pass  # a read-only data folder is still usable, just not cached
    return index



def data_pixel_size(index: DatasetIndex, override: float | None = None) -> PixelSize:
    """One pixel size for a data set: the override, else the first sample's (stated or implied)."""
    if override is not None:
        return PixelSize(check_pixel_size(override), "--pixel-size")
    if not index.samples:
        return UNKNOWN
    return index.pixel_size(index.samples[0])
