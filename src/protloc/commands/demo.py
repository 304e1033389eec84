"""`protloc demo`: the main job on the embedded synthetic data (synthesise, train, evaluate, report)."""

from __future__ import annotations

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    from protloc.demo import ALL_MODELS, DemoSettings

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="synthesise data, train GapNet-PL on the CPU, evaluate and report (about 10 minutes)",
        description="The main job on embedded data: a synthetic HTI data set is generated, GapNet-PL (or "
        "--models all: the five networks) is trained with the paper's protocol at a CPU-sized scale, "
        "evaluated on the test split, and the reports (tables and images) are written. Re-running reuses "
        "finished steps and resumes an interrupted run.",
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--models", default="gapnet-pl",
                        help=f"comma-separated networks, or 'all' ({', '.join(ALL_MODELS)})")
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="epochs without a validation F1 gain before the learning rate is halved")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    add_device_argument(parser)
    parser.add_argument("--fresh", action="store_true", help="retrain even where finished runs exist")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.demo import ALL_MODELS, DemoSettings, format_results, run_demo
    from protloc.errors import ProtlocError

    models = ALL_MODELS if args.models.strip() == "all" else tuple(m.strip() for m in args.models.split(",") if m.strip())
    for name, value in (("--samples", args.samples), ("--size", args.size), ("--crop-size", args.crop_size),
                        ("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--patience", args.patience)):
        if value < 1:
            raise ProtlocError(f"{name} must be at least 1, got {value}")
    settings = DemoSettings(samples=args.samples, size=args.size, crop_size=args.crop_size, epochs=args.epochs,
                            batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed)
    result = run_demo(args.out, models, settings, device=args.device, fresh=args.fresh)
    print(format_results(result))
    return 0
