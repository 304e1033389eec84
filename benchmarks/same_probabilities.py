"""The same probabilities before and after a change: `protloc predict` run by two source trees.

    python benchmarks/same_probabilities.py BEFORE_COMMIT MODEL INPUT [INPUT ...]

Exports BEFORE_COMMIT's src/ into a temporary folder (git archive), runs `protloc predict` on the
inputs once with it and once with this tree's src/, both in the same Python environment with the same
flags, and prints the largest difference of any probability (and of the pixel-size columns). Exit 1
when the ids or any value differ. Used for issue 24: the real field, before (b07a728) and after the
input layer.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def predict(src: Path, model: str, inputs: list[str], out: Path) -> dict[str, dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "protloc", "predict", *inputs, "--model", model, "--out", str(out),
                    "--workers", "0"], check=True, env=env)
    with open(out, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def main(before: str, model: str, *inputs: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subprocess.run(["git", "-C", str(HERE), "archive", before, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        old = predict(tmp / "src", model, list(inputs), tmp / "before.csv")
        new = predict(HERE / "src", model, list(inputs), tmp / "after.csv")
    if list(old) != list(new):
        print(f"different ids: before {list(old)}, after {list(new)}")
        return 1
    worst = 0.0
    for sample_id, row in old.items():
        for column, value in row.items():
            if column in ("id", "predicted", "pixel_size_um", "scale"):
                if value != new[sample_id][column]:
                    print(f"{sample_id} {column}: before {value!r}, after {new[sample_id][column]!r}")
                    return 1
                continue
            worst = max(worst, abs(float(value) - float(new[sample_id][column])))
    classes = [c for c in next(iter(old.values())) if c not in ("id", "predicted", "pixel_size_um", "scale")]
    print(f"{len(old)} sample(s), {len(classes)} classes: max |difference| of the "
          f"probabilities {worst:g}; pixel size, scale and predicted classes identical")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
