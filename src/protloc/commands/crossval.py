"""``protloc crossval``: K-fold cross-validation with fixed folds, mean ± std over folds."""

from __future__ import annotations


def register(subparsers) -> None:
    from protloc.commands.train import add_training_arguments

    parser = subparsers.add_parser(
        "crossval",
        help="K-fold cross-validation with fixed folds (small labelled sets): mean ± std over folds",
        description=(
            "Train one model per fold (fold k held out for testing, 15%% of the rest for validation) with the "
            "options of `protloc train`, score each on its held-out fold and report mean ± std over folds in "
            "OUT/crossval.md and crossval.json. The folds depend only on the data's ids, --folds and --seed "
            "(OUT/folds.json), so runs with other options on the same data use the same folds. With --init, the "
            "starting model is first scored on every fold as it is (no training). With --freeze-encoder the new "
            "head is trained on encoder features computed once per image. Finished folds are kept when the "
            "command is run again."
        ),
    )
    add_training_arguments(parser, out_help="cross-validation folder (one run folder per fold)")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default 5)")
    parser.add_argument("--mapping", metavar="NAME|JSON",
                        help="train on the data's labels mapped onto another label set, e.g. kaggle28-to-hpa13")
    parser.add_argument("--min-positives", type=int, default=3,
                        help="means over the classes with at least this many positives in the data (default 3)")
    parser.add_argument("--no-baseline", action="store_true", help="with --init: do not score the starting model")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.commands.train import overrides_from, run_folds
    from protloc.data.limits import set_max_pixels

    set_max_pixels(args.max_pixels)
    return run_folds(args, overrides_from(args), mapping=args.mapping, min_positives=args.min_positives,
                     baseline=not args.no_baseline)
