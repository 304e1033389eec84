"""Label sets are data: a named, ordered list of class names stored as JSON.

The built-in sets live in ``protloc/labelsets/``; any JSON file with a ``classes`` list is a label set
too. Class names match case- and space-insensitively ("nuclear  Membrane" is "Nuclear membrane").
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
