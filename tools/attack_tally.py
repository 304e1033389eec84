"""What tools/attack.py counts, and how it runs one CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path


PROTLOC = [sys.executable, "-m", "protloc"]


class Tally:
    def __init__(self):
        self.rows: dict[str, Counter] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, entry: str, kind: str, example: str = "") -> None:
        self.rows.setdefault(entry, Counter())[kind] += 1
        if kind != "runs" and example:
            self.examples.setdefault(f"{entry}: {kind}", []).append(example)

    def report(self) -> str:
        kinds = ["runs", "ok", "refused", "traceback", "multi-line error", "lost rows", "duplicated rows",
                 "timeout", "5xx", "schema violations", "log tracebacks", "token leaks"]
        lines = ["entry point".ljust(26) + " ".join(k[:10].rjust(10) for k in kinds)]
        for entry, counts in self.rows.items():
            lines.append(entry.ljust(26) + " ".join(str(counts.get(k, 0)).rjust(10) for k in kinds))
        for key, examples in self.examples.items():
            if not key.endswith(("ok", "refused")):
                lines.append(f"\n## {key} ({len(examples)})\n" + "\n".join(e[:1500] for e in examples[:3]))
        return "\n".join(lines)


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PROTLOC_MAX_PIXELS", "")
    env.pop("PROTLOC_MAX_PIXELS")
    return env


def run_cli(tally: Tally, entry: str, args: list, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess | None:
    tally.add(entry, "runs")
    try:
        proc = subprocess.run(PROTLOC + [os.fsdecode(a) if isinstance(a, Path) else a for a in args],
                              capture_output=True, timeout=timeout, env=_env(), cwd=cwd)
    except subprocess.TimeoutExpired:
        tally.add(entry, "timeout", " ".join(map(str, args)))
        return None
    err = proc.stderr.decode("utf-8", "replace")
    label = " ".join(os.fsdecode(a) if isinstance(a, (Path, bytes)) else str(a) for a in args)
    if "Traceback" in err:
        tally.add(entry, "traceback", f"$ protloc {label}\n{err[-1200:]}")
    if proc.returncode != 0:
        # the refusal is the last line, one line starting "protloc: error:"; warnings and notes may precede it
        lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and "%|" not in line]
        if not lines or not lines[-1].startswith("protloc: error: ") or sum("protloc: error" in x for x in lines) > 1:
            tally.add(entry, "multi-line error", f"$ protloc {label}\n" + "\n".join(lines[-8:]))
        else:
            tally.add(entry, "refused", f"{label}: {lines[-1]}")
    else:
        tally.add(entry, "ok", label)
    return proc


