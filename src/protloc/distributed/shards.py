"""Cutting a run into shards, and the parts folder that makes the run resumable.

The parts folder ``<out>.shards/`` (not ``protloc cells``' own ``<out>.parts/``) lies beside ``--out``
and holds ``manifest.json`` (what this run is: the samples in order, the model, the options, the shard
size) and one finished part per shard. A rerun
of the same command finds the manifest equal, keeps the finished parts and submits only the other
shards; a different command (other inputs, model or options) starts the folder afresh. After the merge
the folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from protloc.files import atomic_write_text

# A shard holds about this many pixels: 16 fields of 2048² (~8 s for a 2-core worker, ~1 s for a GPU):
# the scheduler's few milliseconds per task are lost in it, a lost worker costs one shard of work,
# and 10⁶ fields make ~6·10⁴ parts, not 10⁶ files.
SHARD_PIXELS = 16 * 2048 * 2048
MAX_SHARD = 256


def shard_size_for(height: int, width: int) -> int:
    return max(1, min(MAX_SHARD, round(SHARD_PIXELS / max(1, height * width))))


@dataclass
class Plan:
    folder: Path
    size: int
    shards: list[list]  # entries per shard, in input order
    suffix: str  # ".parquet" (predict) or ".json" (cells: the shard's summary, its images' parts beside it)

    def part(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}{self.suffix}"

    def finished(self) -> set[int]:
        return {i for i in range(len(self.shards)) if self.part(i).is_file()}


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def fingerprint(kind: str, entries, model: str, options: dict) -> str:
    """What makes two runs the same run: their samples (ids and files, in order), the model file (its
    path, size and time) and every option that changes a row."""
    digest = hashlib.sha256()
    stat = os.stat(model) if os.path.exists(model) else None
    head = {"kind": kind, "model": model, "model_stat": [stat.st_size, stat.st_mtime_ns] if stat else None,
            "options": {k: options[k] for k in sorted(options)}}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for entry in entries:
        digest.update(json.dumps([entry.id, entry.sources, entry.problem], sort_keys=True).encode())
    return digest.hexdigest()


def make_plan(out: Path, kind: str, entries, model: str, options: dict, shard_size: int | None,
              probe) -> tuple[Plan, int]:
    """The run's shards and how many parts an earlier run of it left finished. ``probe()`` gives the
    (height, width) of the first sample (read on a worker) when the size is to be chosen here."""
    folder = parts_folder(out)
    suffix = ".parquet" if kind == "predict" else ".json"
    key = fingerprint(kind, entries, model, options)
    manifest = folder / "manifest.json"
    saved = _read_manifest(manifest)
    if saved and saved.get("fingerprint") == key and (shard_size is None or shard_size == saved.get("shard_size")):
        size = int(saved["shard_size"])
    else:
        if folder.exists():
            if saved:
                print(f"protloc: {folder} holds parts of another run (other inputs, model or options): starting afresh",
                      file=sys.stderr)
            _clear(folder)
        size = shard_size or shard_size_for(*probe())
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest, json.dumps({"fingerprint": key, "shard_size": size, "samples": len(entries),
                                                "kind": kind}))
    plan = Plan(folder, size, [entries[i : i + size] for i in range(0, len(entries), size)], suffix)
    return plan, len(plan.finished())


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _clear(folder: Path) -> None:
    """Only a folder that looks like ours is emptied (a user's folder named ``x.csv.parts`` is refused)."""
    from protloc.errors import ProtlocError

    strangers = [p.name for p in folder.iterdir() if not (p.name.startswith(("shard-", ".shard-", "manifest",
                                                                             ".manifest")))]
    if strangers:
        raise ProtlocError(f"{folder} exists and holds files protloc did not write ({strangers[0]}): "
                           "move it away or choose another --out")
    shutil.rmtree(folder)


def remove(plan: Plan) -> None:
    shutil.rmtree(plan.folder, ignore_errors=True)
