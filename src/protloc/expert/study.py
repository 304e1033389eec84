"""The study definition: which samples the experts see, their true labels, and where the data lives.

A study is a folder::

    STUDY/
      study.json        the definition written by ``protloc expert select`` (samples, truth, data set)
      answers.db        expert answers (SQLite; or any SQLAlchemy URL given with --db)
      predictions.json  the fine-tuned model's answers (``protloc expert predict``)
      views/            cache of the rendered expert views (PNG), made on demand
      report/           ``protloc expert report`` output (Markdown, JSON, confusion-matrix PNGs)

Wherever a command takes STUDY, the folder or its ``study.json`` may be given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.files import atomic_write_text
from protloc.labels import LabelSet

FORMAT = "protloc-expert-study/1"
STUDY_FILE = "study.json"


@dataclass
class Study:
    folder: Path
    study_id: str
    label_set: LabelSet
    samples: list[dict]  # [{"id": ..., "label": class name}] in selection order
    data: dict  # {"root": ..., "index": ..., "split_seed": ..., "format": ...}
    seed: int
    created_at: str
    extra: dict = field(default_factory=dict)

    # -- paths -------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.folder / STUDY_FILE

    @property
    def predictions_path(self) -> Path:
        return self.folder / "predictions.json"

    @property
    def views_dir(self) -> Path:
        return self.folder / "views"

    @property
    def report_dir(self) -> Path:
        return self.folder / "report"

    @property
    def default_db_url(self) -> str:
        return f"sqlite:///{(self.folder / 'answers.db').resolve()}"

    # -- content -----------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.label_set.classes)

    @property
    def sample_ids(self) -> list[str]:
        return [s["id"] for s in self.samples]

    def truth(self) -> dict[str, int]:
        return {s["id"]: self.label_set.index(s["label"]) for s in self.samples}

    def has_sample(self, sample_id: str) -> bool:
        return sample_id in self._ids

    @property
    def _ids(self) -> set[str]:
        cached = self.extra.get("_id_set")
        if cached is None:
            cached = set(self.sample_ids)
            self.extra["_id_set"] = cached
        return cached

    def class_name(self, text: str) -> str:
        """A class name as written by a user, in the label set's spelling; ProtlocError if unknown."""
        return self.classes[self.label_set.index(text)]

    def expert_order(self, expert_name: str) -> list[str]:
        """The samples in this expert's own random order, the same at every sign-in."""
        digest = hashlib.sha256(f"{self.study_id}\0{expert_name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        ids = self.sample_ids
        return [ids[i] for i in rng.permutation(len(ids))]

    def dataset(self):
        """The data set index the samples come from (opened lazily, once)."""
        index = self.extra.get("_index")
        if index is None:
            from protloc.data.index import DatasetIndex, open_dataset

            index_path = self.data.get("index")
            root = self.data.get("root")
            if index_path and Path(index_path).is_file():
                index = DatasetIndex.load(index_path)
            elif root and Path(root).is_dir():
                index = open_dataset(root)
            else:
                raise ProtlocError(f"the study's data set is gone: neither {index_path} nor {root} exists")
            self.extra["_index"] = index
        return index

    def load_image(self, sample_id: str) -> np.ndarray:
        if not self.has_sample(sample_id):
            raise ProtlocError(f"sample {sample_id!r} is not in study {self.folder}")
        return self.dataset().load_image(sample_id)

    def load_predictions(self) -> dict | None:
        if not self.predictions_path.is_file():
            return None
        try:
            return json.loads(self.predictions_path.read_text())
        except ValueError:
            raise ProtlocError(f"{self.predictions_path} is not valid JSON; rerun protloc expert predict") from None

    # -- files -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "study_id": self.study_id,
            "created_at": self.created_at,
            "seed": self.seed,
            "label_set": self.label_set.to_json(),
            "data": self.data,
            "selection": {k: v for k, v in self.extra.items() if not k.startswith("_")},
            "samples": self.samples,
        }

    def save(self) -> Path:
        atomic_write_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")
        return self.path


def study_folder(spec: str | Path) -> Path:
    path = Path(spec)
    return path.parent if path.suffix == ".json" else path


def load_study(spec: str | Path) -> Study:
    """A study from its folder or its study.json; ProtlocError (one line) when there is none."""
    folder = study_folder(spec)
    path = Path(spec) if Path(spec).suffix == ".json" else folder / STUDY_FILE
    if not path.is_file():
        raise ProtlocError(f"no study at {spec}: {path} is missing (create one with: protloc expert select)")
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        raise ProtlocError(f"{path} is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ProtlocError(f"{path} is not a protloc expert study ({FORMAT})")
    try:
        label_set = LabelSet(name=raw["label_set"]["name"], classes=tuple(raw["label_set"]["classes"]))
        study = Study(
            folder=folder, study_id=str(raw["study_id"]), label_set=label_set, samples=list(raw["samples"]),
            data=dict(raw.get("data", {})), seed=int(raw.get("seed", 0)), created_at=str(raw.get("created_at", "")),
            extra=dict(raw.get("selection", {})),
        )
        for sample in study.samples:
            label_set.index(sample["label"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtlocError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None
    return study


def allocate(counts: dict[int, int], n: int) -> dict[int, int]:
    """How many samples to draw per class: proportional to availability (largest remainder),
    at least one of every available class when ``n`` allows, never more than a class has."""
    classes = sorted(c for c, k in counts.items() if k > 0)
    total = sum(counts[c] for c in classes)
    if n >= total:
        return {c: counts[c] for c in classes}
    take = {c: 0 for c in classes}
    if n >= len(classes):
        for c in classes:
            take[c] = 1
    remaining = n - sum(take.values())
    while remaining > 0:
        spare = {c: counts[c] - take[c] for c in classes if counts[c] > take[c]}
        spare_total = sum(spare.values())
        quotas = {c: remaining * spare[c] / spare_total for c in spare}
        given = {c: min(spare[c], int(q)) for c, q in quotas.items()}
        if sum(given.values()) == 0:  # fewer left to give than classes: largest remainders first
            for c in sorted(spare, key=lambda c: (-(quotas[c] - int(quotas[c])), c))[:remaining]:
                given[c] = 1
        for c, k in given.items():
            take[c] += k
        remaining = n - sum(take.values())
    return take


def select_study(data: str | Path, out: str | Path, n: int = 200, seed: int = 0, split_seed: int | None = None,
                 overwrite: bool = False, splits_file: str | Path | None = None) -> Study:
    """Draw ``n`` single-label samples of the data set's test split, stratified by class, into a study."""
    from protloc.data.index import default_index_path, default_splits_path, open_dataset
    from protloc.data.splits import load_splits, make_splits, single_label_ids

    if n < 1:
        raise ProtlocError("--n must be at least 1")
    folder = study_folder(out)
    if (folder / STUDY_FILE).exists() and not overwrite:
        raise ProtlocError(f"{folder / STUDY_FILE} exists already; choose another --out (a study's samples never change)")
    data_path = Path(data)
    if not data_path.exists():
        raise ProtlocError(f"no data set at {data}")
    index = open_dataset(data_path)
    root = Path(index.root)
    splits_path = Path(splits_file) if splits_file else Path(default_splits_path(root))
    if splits_file and not splits_path.is_file():
        raise ProtlocError(f"no splits file {splits_file}")
    if split_seed is None and splits_path.is_file():
        splits, split_source = load_splits(splits_path), str(splits_path.resolve())
    else:
        splits, split_source = make_splits(index, seed=split_seed or 0), f"make_splits(seed={split_seed or 0})"
    known = {entry.id for entry in index.samples}
    test_ids = single_label_ids(index, [i for i in splits.get("test", []) if i in known])
    if not test_ids:
        raise ProtlocError(f"the test split of {data} has no labelled single-label samples to draw a study from")
    by_class: dict[int, list[str]] = {}
    for sample_id in sorted(test_ids):
        by_class.setdefault(index.entry(sample_id).labels[0], []).append(sample_id)
    take = allocate({c: len(ids) for c, ids in by_class.items()}, n)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, int]] = []
    for c in sorted(take):
        picks = rng.choice(len(by_class[c]), size=take[c], replace=False)
        chosen += [(by_class[c][i], c) for i in sorted(picks)]
    order = rng.permutation(len(chosen))
    samples = [{"id": chosen[i][0], "label": index.label_set.classes[chosen[i][1]]} for i in order]
    index_path = Path(default_index_path(root))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    study_id = hashlib.sha256(f"{root.resolve()}|{seed}|{n}|{created}".encode()).hexdigest()[:16]
    study = Study(
        folder=folder, study_id=study_id, label_set=index.label_set, samples=samples,
        data={"root": str(root.resolve()), "index": str(index_path.resolve()) if index_path.is_file() else None,
              "format": index.format, "splits": split_source},
        seed=seed, created_at=created,
        extra={"n_requested": n, "test_single_label": len(test_ids),
               "per_class": {index.label_set.classes[c]: k for c, k in sorted(take.items()) if k},
               "available_per_class": {index.label_set.classes[c]: len(v) for c, v in sorted(by_class.items())}},
    )
    study.save()
    return study
