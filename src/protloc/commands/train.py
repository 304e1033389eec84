"""``protloc train``: train a network with the paper's protocol into a run directory."""

from __future__ import annotations

import sys

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a network with the paper's protocol",
        description="Train one of the five networks on labelled images with the paper's protocol "
        "(random crops, SGD momentum 0.9, clipping at norm 5, L1/L2 penalties, plateau halving, whole-image "
        "validation). Defaults: the model's paper settings; a YAML --config and the flags override them. "
        "Run the same command under torchrun for several GPUs or machines.",
    )
    add_training_arguments(parser)
    parser.add_argument("--folds", type=int, metavar="K",
                        help="K-fold cross-validation with fixed folds instead of one run (as `protloc crossval`)")
    parser.set_defaults(handler=run)


def add_training_arguments(parser, out_help: str = "run directory to create (or resume)") -> None:
    parser.add_argument("--model", help="network: gapnet-pl, densenet-121, m-cnn, deeploc, conv-mil")
    parser.add_argument("--data", help="data folder (channels, npz or kaggle-hpa layout) or its index.json")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help=out_help)
    parser.add_argument("--config", metavar="YAML", help="options file, or a shipped config name (e.g. gapnet-pl)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--crop-size", type=int, help="training crop and validation patch size (paper: 1024)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="initial learning rate")
    parser.add_argument("--seed", type=int)
    add_device_argument(parser, config_file=True)
    parser.add_argument("--devices", help="devices per node (default: torchrun's, else 1)")
    parser.add_argument("--workers", type=int, help="data loader worker processes")
    parser.add_argument("--patience", type=int, help="epochs without validation-F1 improvement before halving the lr")
    parser.add_argument("--precision", help="auto, 32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--limit-train", type=int, metavar="N", help="use only the first N training samples")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", metavar="DIR", help="prepared-data cache folder (default DATA/.protloc/cache)")
    cache.add_argument("--no-cache", action="store_true", help="decode the image files every epoch instead")
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--init", metavar="MODEL", help="start from these weights: pretrained, a model file or a run "
                        "folder; a different label set replaces the output layer and keeps the rest")
    parser.add_argument("--freeze-encoder", action="store_true", default=None,
                        help="train only the head (the dense layers); the convolutional encoder stays as loaded")
    parser.add_argument("--head-lr", type=float, help="learning rate of the head (default: --lr)")
    parser.add_argument("--pixel-size", type=float, metavar="UM", help="µm per pixel of the data (default: stated by "
                        "the files or implied by the layout); with --init the data is rescaled to the model's")
    from protloc.data.limits import add_max_pixels_argument

    add_max_pixels_argument(parser)


def overrides_from(args) -> dict:
    return {
        "model": args.model, "data": args.data, "out": args.out, "epochs": args.epochs,
        "crop_size": args.crop_size, "batch_size": args.batch_size, "learning_rate": args.lr, "seed": args.seed,
        "device": args.device, "devices": args.devices, "workers": args.workers, "plateau_patience": args.patience,
        "precision": args.precision, "limit_train": args.limit_train,
        "cache": "none" if args.no_cache else args.cache,
        "init": args.init, "freeze_encoder": args.freeze_encoder, "head_lr": args.head_lr, "pixel_size": args.pixel_size,
    }


def run(args) -> int:
    from pathlib import Path

    from protloc.data.limits import set_max_pixels
    from protloc.errors import ProtlocError
    from protloc.training.config import load_config
    from protloc.training.run import resume_config, train

    set_max_pixels(args.max_pixels)
    overrides = overrides_from(args)
    if args.folds is not None:
        if args.resume:
            raise ProtlocError("--folds runs every fold afresh (finished folds are kept); drop --resume")
        return run_folds(args, overrides, mapping=None, min_positives=3, baseline=True)
    if args.resume:
        if args.config:
            raise ProtlocError("--resume uses the run's own config.yaml; drop --config")
        config = resume_config(Path(args.out), overrides)
    else:
        if not args.model and not args.config:
            raise ProtlocError("choose a network with --model (or a --config that names one)")
        config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    if result.status != "completed":
        print(f"protloc: error: {result.message}", file=sys.stderr)
        return 1
    if result.model_path is not None:
        print(result.message)
        print(f"model: {result.model_path}")
    return 0


# Shared with `protloc crossval` (which imports it from here: the commands never import each other back).
def run_folds(args, overrides: dict, *, mapping, min_positives: int, baseline: bool) -> int:
    from pathlib import Path

    from protloc.errors import ProtlocError
    from protloc.training.config import load_config
    from protloc.training.crossval import render_crossval, run_crossval

    if args.resume:
        raise ProtlocError("cross-validation keeps finished folds by itself; drop --resume")
    if not args.model and not args.config:
        raise ProtlocError("choose a network with --model (or a --config that names one)")
    if min_positives < 1:
        raise ProtlocError(f"--min-positives must be at least 1, got {min_positives}")
    config = load_config(args.config, {k: v for k, v in overrides.items() if k != "out"})
    summary = run_crossval(config, args.folds, Path(args.out), mapping=mapping, min_positives=min_positives,
                           baseline=baseline)
    print(render_crossval(summary))
    print(f"cross-validation written to {args.out}/ (crossval.md, crossval.json, folds.json, fold-*/)")
    return 0
