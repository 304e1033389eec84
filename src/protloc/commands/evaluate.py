"""``protloc evaluate``: the paper's Tables 1 and 2 for a training run, or for any model on any labelled data."""

from __future__ import annotations

from pathlib import Path

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a training run, or any model on any labelled data set: per-class F1/precision/recall/AUC",
        description=(
            "Either `protloc evaluate RUN_DIR`: tune per-class decision thresholds on the run's validation split "
            "(stored in model.pt and thresholds.json), predict the chosen split and write "
            "RUN_DIR/evaluation/SPLIT/. Or `protloc evaluate --model M --data D`: score a model (pretrained, a "
            "model file or a run folder) on a labelled data set whose labels are the model's or map onto them "
            "(built-in kaggle28-to-hpa13, or --mapping FILE), each image rescaled to the model's pixel size; the "
            "report goes to --out. Both write metrics.json, report.md, roc_curves.png, f1_per_class.png, "
            "predictions.csv."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="training run directory (holds model.pt)")
    parser.add_argument("--model", help="model to score on --data: pretrained, a model file or a run folder")
    parser.add_argument("--data", help="labelled data folder (channels, npz or kaggle-hpa layout) or its index.json")
    parser.add_argument("--mapping", metavar="NAME|JSON",
                        help="label-set mapping from the data's labels to the model's (default: the built-in one "
                        "joining the two label sets, e.g. kaggle28-to-hpa13)")
    parser.add_argument("--pixel-size", type=float, metavar="UM",
                        help="µm per pixel of the data (default: stated by the files or implied by the layout)")
    parser.add_argument("--out", metavar="DIR", help="report folder for --model/--data (default ./evaluation/DATA_NAME)")
    parser.add_argument("--min-positives", type=int, default=3,
                        help="also report means over classes with at least this many positives (default 3)")
    parser.add_argument("--split", choices=("test", "val", "train"), default=None,
                        help="split to evaluate (a run: default test; --data: default every labelled sample, "
                        "else a split of the data's splits file)")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="patches per forward pass (default 8)")
    parser.add_argument(
        "--whole-image", action="store_true",
        help="one pass over each whole image instead of averaging covering patches (fully convolutional models)",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.errors import ProtlocError
    from protloc.evaluation.report import render_markdown

    if args.run_dir and (args.model or args.data):
        raise ProtlocError("give either RUN_DIR or --model and --data, not both")
    if not args.run_dir:
        if not args.model or not args.data:
            raise ProtlocError("give a training run folder (RUN_DIR) or --model M --data D")
        return run_model_on_data(args)
    for flag in ("mapping", "pixel_size", "out"):
        if getattr(args, flag) is not None:
            raise ProtlocError(f"--{flag.replace('_', '-')} goes with --model/--data, not with RUN_DIR")
    from protloc.evaluation.evaluate import evaluate_run

    split = args.split or "test"
    metrics = evaluate_run(
        args.run_dir, split=split, device=args.device, whole_image=args.whole_image, batch_size=args.batch_size,
    )
    out = Path(args.run_dir) / "evaluation" / split
    print(render_markdown(metrics))
    print(f"report written to {out}/ (report.md, metrics.json, roc_curves.png, f1_per_class.png, predictions.csv)")
    print(f"thresholds stored in {Path(args.run_dir) / 'model.pt'} and {Path(args.run_dir) / 'thresholds.json'}")
    return 0


def run_model_on_data(args) -> int:
    from protloc.errors import ProtlocError
    from protloc.evaluation.external import evaluate_model, render_data_section
    from protloc.evaluation.report import render_markdown

    if args.min_positives < 1:
        raise ProtlocError(f"--min-positives must be at least 1, got {args.min_positives}")
    out = Path(args.out) if args.out else Path("evaluation") / Path(args.data).resolve().name
    metrics = evaluate_model(
        args.model, args.data, out, split=args.split, mapping=args.mapping, pixel_size=args.pixel_size,
        whole_image=args.whole_image, batch_size=args.batch_size, device=args.device,
        min_positives=args.min_positives,
    )
    print(render_markdown(metrics))
    print(render_data_section(metrics))
    print(f"report written to {out}/ (report.md, metrics.json, roc_curves.png, f1_per_class.png, predictions.csv, "
          "inputs.csv)")
    return 0
