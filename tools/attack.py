"""Try to break protloc as a hostile user would (issue 11's "Done when" check), and count what breaks.

    python tools/attack.py corpus DIR             # build the attack corpus (broken and odd inputs) in DIR
    python tools/attack.py cli DIR --model M.pt   # every CLI entry point over the corpus
    python tools/attack.py resume DIR --model M.pt [--rounds 10]   # kill -9 predict at random points, resume
    python tools/attack.py web DIR --model M.pt [--seconds 60]     # a real `protloc serve` on 127.0.0.1 only

Counts per entry point: tracebacks (any 'Traceback' in stderr), errors longer than one line, lost or
duplicated rows, server errors (5xx) and schema violations. The web attack listens and sends on
127.0.0.1 only. Run it from a checkout: `PYTHONPATH=src python tools/attack.py ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from attack_corpus import _sample, build_corpus  # noqa: E402
from attack_tally import PROTLOC, Tally, _env, run_cli  # noqa: E402
from attack_web import attack_web  # noqa: E402


def attack_cli(root: Path, model: Path) -> Tally:
    cases = build_corpus(root / "corpus")
    tally = Tally()
    out = root / "out"
    out.mkdir(exist_ok=True)
    for name, inputs in cases.items():
        if name.startswith(("file", "zarr")) or name in ("mixed folder", "good folder", "a folder of nothing"):
            run_cli(tally, "data scan", ["data", "scan", inputs[0], "--out", out / "scan"])
    for name, inputs in cases.items():
        stem = "".join(ch if ch.isalnum() else "-" for ch in name)
        run_cli(tally, "predict", ["predict", "--model", model, "--out", out / f"{stem}.csv", *inputs])
    mixed = cases["mixed folder"]
    for extra, suffix in (([], ".jsonl"), ([], ".parquet"), (["--maps", out / "maps"], ".csv"),
                          (["--whole-image"], ".csv"), (["--whole-image", "--maps", out / "maps2"], ".jsonl")):
        target = out / f"mixed-{len(extra)}{suffix}"
        proc = run_cli(tally, "predict " + " ".join(a for a in extra if isinstance(a, str)) + suffix,
                       ["predict", "--model", model, "--out", target, *extra, *mixed])
        if proc is not None and proc.returncode == 0:
            _check_rows(tally, "predict " + suffix, target, None)
    # outputs that cannot be written: a foreign file, a folder, a file where a folder must go
    good = root / "corpus" / "good"
    blocker = out / "a-file"
    blocker.write_text("x")
    (out / "dir.csv").mkdir(exist_ok=True)
    for name in ("foreign.csv", "foreign.jsonl"):
        (out / name).write_bytes(b"id,x\n\xff\xfe not text\n")
    for target in (out / "foreign.csv", out / "foreign.jsonl", out / "dir.csv", blocker / "p.csv"):
        run_cli(tally, "predict bad --out", ["predict", "--model", model, "--out", target, good])
    run_cli(tally, "predict bad --out", ["predict", "--model", model, "--out", out / "m.csv", "--maps", blocker, good])
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", good, "--out", blocker / "run", "--epochs", "1"])
    run_cli(tally, "evaluate", ["evaluate", "--model", model, "--data", good, "--out", blocker / "eval"])
    run_cli(tally, "export", ["export", model, "--format", "onnx", "--out", blocker / "m.onnx"])
    # training and evaluation on the good folder, on the mixed one, and on broken data sets
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "good", "--out", out / "run1",
                             "--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", mixed[0], "--out", out / "run2",
                             "--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "single", "--out", out / "run3",
                             "--epochs", "1", "--crop-size", "32", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "nongff.zarr", "--out",
                             out / "run4", "--epochs", "1"], timeout=600)
    run_cli(tally, "train", ["train", "--resume", "--out", out / "run-none"])
    for data in (root / "corpus" / "good", mixed[0], root / "corpus" / "single", root / "corpus" / "nongff.zarr",
                 root / "corpus" / "baddir"):
        run_cli(tally, "evaluate", ["evaluate", "--model", model, "--data", data, "--out", out / "eval"])
    run_cli(tally, "evaluate", ["evaluate", out / "run1"])
    run_cli(tally, "evaluate", ["evaluate", root / "corpus" / "single"])
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("bioimageio", ".zip")):
        run_cli(tally, "export", ["export", model, "--format", fmt, "--out", out / f"m{suffix}", "--test-size", "64"]
                if fmt == "bioimageio" else ["export", model, "--format", fmt, "--out", out / f"m{suffix}"], timeout=600)
        run_cli(tally, "export", ["export", cases["file trunc.npz"][0], "--format", fmt, "--out", out / f"x{suffix}"])
        run_cli(tally, "export", ["export", root / "corpus" / "single" / "zero.tif", "--format", fmt, "--out",
                                  out / f"y{suffix}"])
    return tally


# ---------------------------------------------------------------------------------------------- kill -9 resume
def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return [row[0] for row in list(csv.reader(handle))[1:]]
    if path.suffix == ".jsonl":
        return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    import pandas

    return list(pandas.read_parquet(path)["id"])


def _check_rows(tally: Tally, entry: str, path: Path, expected: set[str] | None) -> None:
    try:
        ids = _read_ids(path)
    except Exception as exc:  # an unreadable output is a lost output
        tally.add(entry, "lost rows", f"{path}: unreadable: {exc!r}")
        return
    counts = Counter(ids)
    duplicated = {i: c for i, c in counts.items() if c > 1}
    if duplicated:
        tally.add(entry, "duplicated rows", f"{path}: {duplicated}")
    if expected is not None and set(ids) != expected:
        tally.add(entry, "lost rows", f"{path}: missing {sorted(expected - set(ids))} extra {sorted(set(ids) - expected)}")


def attack_resume(root: Path, model: Path, rounds: int) -> Tally:
    tally = Tally()
    folder = root / "resume-data"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(30):
            _sample(folder, f"r{i:02d}", (96, 96), seed=100 + i)
    expected = {f"r{i:02d}" for i in range(30)}
    rng = random.Random(0)
    for suffix in (".csv", ".jsonl", ".parquet"):
        entry = f"predict kill -9 {suffix}"
        target = root / f"resume{suffix}"
        target.unlink(missing_ok=True)
        start = time.monotonic()
        run_cli(tally, entry, ["predict", "--model", model, "--out", target, folder])
        full = time.monotonic() - start
        _check_rows(tally, entry, target, expected)
        for _ in range(rounds if suffix != ".parquet" else max(2, rounds // 3)):
            target.unlink(missing_ok=True)
            for _kill in range(rng.randint(1, 3)):
                proc = subprocess.Popen(PROTLOC + ["predict", "--model", str(model), "--out", str(target), str(folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                                        start_new_session=True)
                time.sleep(rng.uniform(0.3, full))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            run_cli(tally, entry, ["predict", "--model", model, "--out", target, folder])
            _check_rows(tally, entry, target, expected)
    return tally


# ---------------------------------------------------------------------------------------------- web
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["corpus", "cli", "resume", "web"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if args.what == "corpus":
        for name, paths in build_corpus(args.dir).items():
            print(name, [os.fsdecode(p) for p in paths])
        return 0
    tally = {"cli": lambda: attack_cli(args.dir, args.model), "resume": lambda: attack_resume(args.dir, args.model, args.rounds),
             "web": lambda: attack_web(args.dir, args.model, args.seconds)}[args.what]()
    print(tally.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
