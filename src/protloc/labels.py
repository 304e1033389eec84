"""Label sets and the mappings between them are data, stored as JSON.

The built-in sets live in ``protloc/labelsets/``; any JSON file with a ``classes`` list is a label set
too. Class names match case- and space-insensitively ("nuclear  Membrane" is "Nuclear membrane").

A label-set mapping (``protloc/labelsets/<from>-to-<to>.json``, or a user's file of the same form)
names its two label sets and lists every class of the first with the class of the second it maps to,
or ``null`` when it has no counterpart and is dropped, each with the reason for the choice::

    {"name": "...", "from": "kaggle28", "to": "hpa13",
     "map": [{"from": "Nucleoplasm", "to": "Nucleus", "why": "..."}, ...]}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError

BUILTIN_LABEL_SETS = ("hpa13", "kaggle28")
DEFAULT_LABEL_SET = "hpa13"


def _name_key(name: str) -> str:
    return re.sub(r"\s+", "", name).casefold()


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup: dict[str, int] = {}
        for index, cls in enumerate(self.classes):
            key = _name_key(cls)
            if key in lookup:
                raise ProtlocError(f"label set {self.name!r} names class {cls!r} twice")
            lookup[key] = index
        object.__setattr__(self, "_lookup", lookup)

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Index of a class name, matched case- and space-insensitively; ProtlocError if unknown."""
        try:
            return self._lookup[_name_key(name)]
        except KeyError:
            raise ProtlocError(f"unknown class name {name.strip()!r} for label set {self.name!r}") from None

    def parse(self, text: str) -> tuple[int, ...]:
        """Parse a labels cell: class names separated by ';' or class indices separated by spaces.

        Returns sorted, de-duplicated class indices. An empty cell is an empty label list.
        """
        text = text.strip()
        if not text:
            return ()
        if ";" not in text and re.fullmatch(r"\d+(\s+\d+)*", text):
            indices = {int(tok) for tok in text.split()}
            bad = [i for i in indices if i >= len(self.classes)]
            if bad:
                raise ProtlocError(f"class index {bad[0]} out of range for label set {self.name!r} ({len(self)} classes)")
            return tuple(sorted(indices))
        return tuple(sorted({self.index(part) for part in text.split(";") if part.strip()}))

    def vector(self, indices) -> np.ndarray:
        """Binary float32 label vector for a set of class indices."""
        vec = np.zeros(len(self.classes), dtype=np.float32)
        vec[list(indices)] = 1.0
        return vec

    def names(self, indices) -> list[str]:
        return [self.classes[i] for i in indices]

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}


def load_label_set(name_or_path: str | Path = DEFAULT_LABEL_SET) -> LabelSet:
    """A built-in label set by name (``hpa13``, ``kaggle28``) or a JSON file with a ``classes`` list."""
    if isinstance(name_or_path, LabelSet):
        return name_or_path
    text = str(name_or_path)
    if text in BUILTIN_LABEL_SETS:
        raw = resources.files("protloc.labelsets").joinpath(f"{text}.json").read_text()
    else:
        path = Path(text)
        if not path.is_file():
            raise ProtlocError(f"no label set {text!r}: give one of {', '.join(BUILTIN_LABEL_SETS)} or a JSON file")
        raw = path.read_text()
    try:
        data = json.loads(raw)
        classes = tuple(str(c) for c in data["classes"])
    except (ValueError, KeyError, TypeError):
        raise ProtlocError(f"label set {text!r} is not JSON with a 'classes' list") from None
    if not classes:
        raise ProtlocError(f"label set {text!r} has no classes")
    return LabelSet(name=str(data.get("name", Path(text).stem)), classes=classes)


HPA13 = load_label_set("hpa13")
KAGGLE28 = load_label_set("kaggle28")


BUILTIN_MAPPINGS = ("kaggle28-to-hpa13",)


@dataclass(frozen=True)
class LabelMapping:
    """Every class of ``source`` mapped onto one class of ``target`` or dropped (``None``)."""

    name: str
    source: LabelSet
    target: LabelSet
    targets: tuple[int | None, ...]  # per source class: target class index, or None = dropped
    reasons: tuple[str, ...]

    @property
    def dropped(self) -> list[str]:
        return [self.source.classes[i] for i, t in enumerate(self.targets) if t is None]

    def map_indices(self, indices) -> tuple[int, ...]:
        """Source class indices -> sorted, de-duplicated target class indices (dropped ones vanish)."""
        return tuple(sorted({self.targets[i] for i in indices if self.targets[i] is not None}))

    def table(self) -> list[dict]:
        """One row per source class: from, to (None = dropped), why."""
        return [
            {"from": cls, "to": None if t is None else self.target.classes[t], "why": why}
            for cls, t, why in zip(self.source.classes, self.targets, self.reasons)
        ]

    def to_json(self) -> dict:
        return {"name": self.name, "from": self.source.name, "to": self.target.name, "map": self.table()}


def load_label_mapping(name_or_path: str | Path) -> LabelMapping:
    """A built-in mapping by name (``kaggle28-to-hpa13``) or a JSON mapping file; ProtlocError if unusable.

    Every class of the source label set must appear exactly once; unknown names are errors, so a
    typo never silently drops a class.
    """
    text = str(name_or_path)
    if text in BUILTIN_MAPPINGS:
        raw = resources.files("protloc.labelsets").joinpath(f"{text}.json").read_text()
    else:
        path = Path(text)
        if not path.is_file():
            raise ProtlocError(f"no label mapping {text!r}: give one of {', '.join(BUILTIN_MAPPINGS)} or a JSON file")
        raw = path.read_text()
    try:
        data = json.loads(raw)
        source, target, rows = data["from"], data["to"], data["map"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) and "from" in row for row in rows):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ProtlocError(f"label mapping {text!r} is not JSON with 'from', 'to' and a 'map' list of "
                           "{'from': class, 'to': class or null}") from None
    source_set, target_set = load_label_set(source), load_label_set(target)
    targets: list[int | None] = [None] * len(source_set)
    reasons = [""] * len(source_set)
    seen: set[int] = set()
    for row in rows:
        index = source_set.index(str(row["from"]))
        if index in seen:
            raise ProtlocError(f"label mapping {text!r} maps {source_set.classes[index]!r} twice")
        seen.add(index)
        to = row.get("to")
        targets[index] = None if to is None else target_set.index(str(to))
        reasons[index] = str(row.get("why", ""))
    missing = [source_set.classes[i] for i in range(len(source_set)) if i not in seen]
    if missing:
        raise ProtlocError(f"label mapping {text!r} does not say where {missing[0]!r} goes "
                           f"(map it to a class or to null){f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return LabelMapping(name=str(data.get("name", Path(text).stem)), source=source_set, target=target_set,
                        targets=tuple(targets), reasons=tuple(reasons))


def find_label_mapping(source: LabelSet, target: LabelSet) -> LabelMapping | None:
    """The built-in mapping from ``source`` to ``target`` (matched by their classes), or None."""
    for name in BUILTIN_MAPPINGS:
        mapping = load_label_mapping(name)
        if mapping.source.classes == source.classes and mapping.target.classes == target.classes:
            return mapping
    return None
