"""Seeded train/validation/test splits that depend only on (seed, sample id).

Each id is placed by a hash of ``f"{seed}:{id}"`` mapped to [0, 1): the split does not depend on the
order files are listed in, and adding samples to a data set never moves the ones already placed.
The paper split 80/10/10 and drew its 200-sample expert test set from the test split's single-label
("multi-class") samples; ``single_label_ids`` gives those subsets.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from protloc.data.index import default_index_path, default_splits_path  # noqa: F401  (re-exported)
from protloc.errors import ProtlocError
from protloc.files import atomic_write_text

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def _check_fractions(fractions) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLIT_NAMES) or any(f < 0 for f in fractions) or not math.isclose(
        sum(fractions), 1.0, abs_tol=1e-6
    ):
        raise ProtlocError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return fractions


def split_position(sample_id: str, seed: int = 0) -> float:
    """The id's fixed position in [0, 1) for this seed (blake2b of "seed:id")."""
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(sample_id: str, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> str:
    """'train', 'val' or 'test' for one id; depends on nothing but (seed, id, fractions)."""
    fractions = _check_fractions(fractions)
    position = split_position(sample_id, seed)
    bound = 0.0
    for name, fraction in zip(SPLIT_NAMES, fractions):
        bound += fraction
        if position < bound:
            return name
    return next(name for name, f in reversed(list(zip(SPLIT_NAMES, fractions))) if f > 0)


def _ids_of(index_or_ids) -> list[str]:
    if hasattr(index_or_ids, "samples"):
        return [entry.id for entry in index_or_ids.samples]
    return [str(i) for i in index_or_ids]


def make_splits(index, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> dict[str, list[str]]:
    """{'train': ids, 'val': ids, 'test': ids}, each sorted, over the index's usable samples
    (or any iterable of ids)."""
    fractions = _check_fractions(fractions)
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for sample_id in _ids_of(index):
        splits[assign_split(sample_id, seed, fractions)].append(sample_id)
    return {name: sorted(ids) for name, ids in splits.items()}


def single_label_ids(index, ids) -> list[str]:
    """The ids whose sample carries exactly one label (the paper's "multi-class" subset)."""
    return [sample_id for sample_id in ids if len(index.entry(sample_id).labels or ()) == 1]


def save_splits(splits: dict, path, seed: int, fractions=DEFAULT_FRACTIONS, index=None) -> None:
    """Write the splits as JSON; with ``index``, also each split's single-label subset."""
    path = Path(path)
    data = {
        "protloc_splits": 1,
        "method": "blake2b-64 of 'seed:id' mapped to [0,1), cut at the cumulative fractions",
        "seed": int(seed),
        "fractions": list(_check_fractions(fractions)),
        "splits": {name: list(splits.get(name, [])) for name in SPLIT_NAMES},
    }
    if index is not None:
        data["single_label"] = {name: single_label_ids(index, data["splits"][name]) for name in SPLIT_NAMES}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_split_file(path) -> dict:
    """The whole splits file: seed, fractions, splits and (when saved) single_label."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        splits = {name: [str(i) for i in data["splits"][name]] for name in SPLIT_NAMES}
    except FileNotFoundError:
        raise ProtlocError(f"no splits file {path} (run `protloc data scan` on the data folder)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtlocError(f"{path} is not a protloc splits file ({exc})") from None
    data["splits"] = splits
    return data


def load_splits(path) -> dict[str, list[str]]:
    """{'train': ids, 'val': ids, 'test': ids} from a splits file."""
    return load_split_file(path)["splits"]
