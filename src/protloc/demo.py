"""The demo, protloc's main job on its embedded data: synthesise → scan → train → evaluate → report.

Everything lands in one folder (default ``demo-out``): ``data/`` (the synthetic data set with its
index and split), ``runs/<model>/`` (training runs with their evaluation reports), and, with several
models, ``comparison/`` (the paper's Tables 1, 2 and 7). Running the demo again reuses what is there:
a finished run is reported again, an interrupted one is resumed; ``fresh`` starts over.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from protloc.errors import ProtlocError

ALL_MODELS = ("gapnet-pl", "densenet-121", "m-cnn", "deeploc", "conv-mil")


@dataclass(frozen=True)
class DemoSettings:
    """A set-up sized for a 2-core CPU: about ten minutes for GapNet-PL.

    Measured on the 2-core development machine with the generator before issue 16's redraw (not yet
    re-measured on the redrawn one; README): 60 epochs of 1,200 training crops at about
    200 crops/s, the learning rate halved three times by the plateau rule; test mean AUC 0.99, mean
    F1 0.91. Fewer epochs stop before the halvings that take the small-structure classes
    (centrosome, mitochondria, Golgi) from about 0.93 to 0.97 validation AUC.
    """

    samples: int = 1500
    size: int = 256
    crop_size: int = 128
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 0.01
    patience: int = 5
    seed: int = 0


@dataclass
class DemoResult:
    out: Path
    data: Path
    runs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    comparison: Path | None = None


def _synth_params(settings: DemoSettings) -> dict:
    return {"samples": settings.samples, "size": settings.size, "seed": settings.seed}


def prepare_data(data: Path, settings: DemoSettings, progress: bool) -> Path:
    """The synthetic data set, generated once per set of parameters."""
    from protloc.data.synth.dataset import generate_dataset

    marker = data / "demo-synth.json"
    wanted = _synth_params(settings)
    if marker.is_file() and json.loads(marker.read_text()) == wanted and (data / "labels.csv").is_file():
        return data
    # an index of an earlier data set is stale, and generate_dataset only removes its own files
    shutil.rmtree(data / ".protloc", ignore_errors=True)
    marker.unlink(missing_ok=True)
    generate_dataset(data, settings.samples, settings.size, settings.seed, overwrite=True, progress=progress)
    marker.write_text(json.dumps(wanted))
    return data


def _run_finished(run_dir: Path) -> bool:
    return (run_dir / "model.pt").is_file() and (run_dir / "evaluation" / "test" / "metrics.json").is_file()


def train_and_evaluate(model: str, data: Path, run_dir: Path, settings: DemoSettings, device: str,
                       progress: bool, log=print) -> dict:
    from protloc.evaluation.evaluate import evaluate_run
    from protloc.training.config import load_config
    from protloc.training.run import resume_config, train

    if _run_finished(run_dir):
        log(f"[{model}] finished earlier: reusing {run_dir} (--fresh to retrain)")
        return json.loads((run_dir / "evaluation" / "test" / "metrics.json").read_text())
    overrides = {
        "model": model, "data": str(data), "out": str(run_dir), "epochs": settings.epochs,
        "crop_size": settings.crop_size, "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate, "plateau_patience": settings.patience,
        "seed": settings.seed, "device": device, "progress": progress,
    }
    resuming = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resuming:
        log(f"[{model}] resuming the interrupted run in {run_dir}")
        config = resume_config(run_dir, {"progress": progress})
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        config = load_config(model, overrides)
        log(f"[{model}] training {settings.epochs} epochs on {settings.crop_size}px crops -> {run_dir}")
    result = train(config, resume=resuming)
    if result.status != "completed":
        raise ProtlocError(f"[{model}] {result.message}")
    log(f"[{model}] evaluating on the test split")
    return evaluate_run(run_dir, split="test", progress=progress)


def run_demo(out: str | Path = "demo-out", models=("gapnet-pl",), settings: DemoSettings = DemoSettings(),
             device: str = "auto", fresh: bool = False, progress: bool | None = None, log=print) -> DemoResult:
    from protloc.data.index import open_dataset

    progress = sys.stderr.isatty() if progress is None else progress
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ProtlocError(f"unknown model {unknown[0]!r}; choose from {', '.join(ALL_MODELS)} or 'all'")
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out / "runs", ignore_errors=True)
        shutil.rmtree(out / "comparison", ignore_errors=True)
    result = DemoResult(out=out, data=out / "data")

    log(f"[data] synthetic data set: {settings.samples} samples of {settings.size}x{settings.size} -> {result.data}")
    prepare_data(result.data, settings, progress)
    index = open_dataset(result.data)
    summary = index.summary()
    log(f"[data] {summary['valid']} valid samples, {len(summary['excluded'])} excluded, "
        f"multi-label fraction {summary['multi_label_fraction']:.2f}")

    for model in models:
        run_dir = out / "runs" / model
        result.runs[model] = run_dir
        result.metrics[model] = train_and_evaluate(model, result.data, run_dir, settings, device, progress, log)

    if len(models) > 1:
        from protloc.evaluation.compare import compare_runs, write_comparison

        tables = compare_runs([result.runs[m] for m in models])
        result.comparison = write_comparison(tables, out / "comparison")["markdown"]
    return result


def format_results(result: DemoResult) -> str:
    """The closing summary: test-split figures per model and where the reports are."""
    def cell(summary: dict, key: str) -> str:
        stats = summary.get(key) or {}
        return "n/a" if stats.get("mean") is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"

    lines = ["", "test split (mean ± std over classes)",
             f"{'model':<14} {'ROC AUC':<16} {'F1 @0.5':<16} {'F1 @tuned':<16}"]
    for model, metrics in result.metrics.items():
        summary = metrics["summary"]
        lines.append(f"{model:<14} {cell(summary, 'auc'):<16} {cell(summary, 'f1'):<16} {cell(summary, 'f1_tuned'):<16}")
    lines.append("")
    for model, run_dir in result.runs.items():
        lines.append(f"report for {model}: {run_dir / 'evaluation' / 'test' / 'report.md'} "
                     f"(ROC curves and F1 bars as PNG beside it)")
    if result.comparison is not None:
        lines.append(f"comparison of the methods: {result.comparison}")
    return "\n".join(lines)
