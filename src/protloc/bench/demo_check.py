"""Re-check a finished demo against the range the documentation states (``protloc bench --sections demo-check``).

The demo's headline (test ROC AUC and F1 of GapNet-PL) is not one number: training is deterministic
on one machine, but another CPU's kernels sum in another order and 60 epochs amplify it, and the
seed draws another data set. So the documentation states a *range* (over seeds and CPUs measured),
kept in a results file (``benchmarks/demo-headline.json``), and this check compares a
finished ``protloc demo`` folder with it: the same settings (else the figures are not comparable and
the check refuses), then every stated figure inside its range or not.

Stated file (JSON)::

    {"settings": {"samples": 1500, "size": 256, ...},   # what the demo was run with (seed excluded)
     "ranges": {"auc": [lo, hi], "f1": [lo, hi], "f1_tuned": [lo, hi], "auc:Centrosome": [lo, hi]},
     "measurements": [{"commit": ..., "cpu": ..., "seed": ..., "auc": ...}, ...],   # where the range comes from
     "status": "..."}

``auc``, ``f1`` and ``f1_tuned`` are the test split's means over classes (the demo's printed
line); ``auc:CLASS`` one class's ROC AUC.
"""

from __future__ import annotations

import json
from pathlib import Path

from protloc.errors import ProtlocError

# the demo settings a stated range depends on; the seed is what a range is taken over
SETTING_KEYS = ("samples", "size", "crop_size", "epochs", "batch_size", "learning_rate", "patience")
SUMMARY_FIGURES = ("auc", "f1", "f1_tuned")


def _run_folder(path: Path, model: str) -> tuple[Path, Path | None]:
    """(the training run, the demo's data folder or None) for a demo folder or a run folder."""
    if (path / "runs" / model / "config.yaml").is_file():
        return path / "runs" / model, path / "data"
    if (path / "config.yaml").is_file():
        data = path.parent.parent / "data"
        return path, data if data.is_dir() else None
    raise ProtlocError(f"{path} is neither a demo folder (runs/{model}/) nor a training run folder")


def read_demo(path: str | Path, model: str = "gapnet-pl") -> dict:
    """A finished demo's settings, test metrics and machine, as the check compares them."""
    import yaml

    run, data = _run_folder(Path(path), model)
    metrics_file = run / "evaluation" / "test" / "metrics.json"
    if not metrics_file.is_file():
        raise ProtlocError(f"{run} has no test evaluation ({metrics_file.name}): the demo has not finished")
    metrics = json.loads(metrics_file.read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    settings = {"crop_size": config.get("crop_size"), "epochs": config.get("epochs"),
                "batch_size": config.get("batch_size"), "learning_rate": config.get("learning_rate"),
                "patience": config.get("plateau_patience"), "seed": config.get("seed")}
    marker = data / "demo-synth.json" if data is not None else None
    if marker is not None and marker.is_file():
        synth = json.loads(marker.read_text())
        settings.update(samples=synth.get("samples"), size=synth.get("size"))
    figures = {name: metrics["summary"][name]["mean"] for name in SUMMARY_FIGURES if name in metrics["summary"]}
    for name, row in metrics.get("per_class", {}).items():
        if row.get("auc") is not None:
            figures[f"auc:{name}"] = row["auc"]
    environment = {}
    if (run / "environment.json").is_file():
        env = json.loads((run / "environment.json").read_text())
        environment = {"protloc": env.get("versions", {}).get("protloc"), "torch": env.get("versions", {}).get("torch"),
                       "device": env.get("device"), "host": env.get("host")}
    return {"run": str(run), "settings": settings, "figures": figures, "environment": environment,
            "n_test": metrics.get("n_samples")}


def read_stated(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"no stated-range file {path} (give --expected FILE)")
    try:
        stated = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProtlocError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    ranges = stated.get("ranges") if isinstance(stated, dict) else None
    if not isinstance(ranges, dict) or not ranges:
        raise ProtlocError(f"{path} states no ranges (a 'ranges' object of figure: [low, high])")
    for name, bounds in ranges.items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
                and bounds[0] <= bounds[1]):
            raise ProtlocError(f"{path}: range of {name!r} must be [low, high], got {bounds!r}")
    return stated


def check_demo(run: str | Path, expected: str | Path, model: str = "gapnet-pl") -> dict:
    """Compare a finished demo with the stated ranges; ProtlocError when the settings differ."""
    stated = read_stated(expected)
    demo = read_demo(run, model)
    wanted = stated.get("settings", {})
    different = [f"{key} {demo['settings'].get(key)!r} (stated {wanted[key]!r})"
                 for key in SETTING_KEYS if key in wanted and demo["settings"].get(key) != wanted[key]]
    if different:
        raise ProtlocError(f"{demo['run']} was not run with the stated settings, so its figures are not comparable: "
                           + ", ".join(different))
    rows = []
    for name, (low, high) in stated["ranges"].items():
        value = demo["figures"].get(name)
        rows.append({"figure": name, "measured": value, "low": low, "high": high,
                     "inside": value is not None and low <= value <= high})
    return {"run": demo["run"], "expected": str(expected), "settings": demo["settings"],
            "environment": demo["environment"], "n_test": demo["n_test"], "rows": rows,
            "status": stated.get("status"), "all_inside": all(row["inside"] for row in rows)}


def markdown(result: dict) -> str:
    lines = [f"### Demo check: {result['run']} against {result['expected']}", "",
             f"seed {result['settings'].get('seed')}, {result['n_test']} test fields; "
             f"protloc {result['environment'].get('protloc')}, torch {result['environment'].get('torch')}, "
             f"device {result['environment'].get('device')}", "",
             "| figure | measured | stated range | inside |", "|---|---:|---|---|"]
    for row in result["rows"]:
        measured = "missing" if row["measured"] is None else f"{row['measured']:.3f}"
        lines.append(f"| {row['figure']} | {measured} | {row['low']:.3f} - {row['high']:.3f} | "
                     f"{'yes' if row['inside'] else '**no**'} |")
    lines += ["", "all inside the stated range" if result["all_inside"] else "**outside the stated range**"]
    if result.get("status"):
        lines += ["", f"stated range: {result['status']}"]
    return "\n".join(lines)
