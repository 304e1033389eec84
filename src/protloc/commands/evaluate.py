"""``protloc evaluate RUN_DIR``: the paper's Tables 1 and 2 for one training run."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a training run: per-class F1/precision/recall/AUC, tuned thresholds, report",
        description=(
            "Tune per-class decision thresholds on the run's validation split (stored in model.pt and "
            "thresholds.json), predict the chosen split and write RUN_DIR/evaluation/SPLIT/: metrics.json, "
            "report.md, roc_curves.png, f1_per_class.png, predictions.csv."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (holds model.pt)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default test)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per forward pass (default 8)")
    parser.add_argument(
        "--whole-image", action="store_true",
        help="one pass over each whole image instead of averaging covering patches (fully convolutional models)",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.evaluation.evaluate import evaluate_run
    from protloc.evaluation.report import render_markdown

    metrics = evaluate_run(
        args.run_dir, split=args.split, device=args.device, whole_image=args.whole_image, batch_size=args.batch_size,
    )
    out = Path(args.run_dir) / "evaluation" / args.split
    print(render_markdown(metrics))
    print(f"report written to {out}/ (report.md, metrics.json, roc_curves.png, f1_per_class.png, predictions.csv)")
    print(f"thresholds stored in {Path(args.run_dir) / 'model.pt'} and {Path(args.run_dir) / 'thresholds.json'}")
    return 0
