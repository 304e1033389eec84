"""``protloc compare RUN_DIR...``: methods side by side (paper Tables 1, 2 and 7)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare evaluated runs: Table 1 with Wilcoxon p-values, per-class Table 2, Table 7 timings",
        description=(
            "Compare runs evaluated with `protloc evaluate`. The first run is tested against each other one "
            "with a one-sided paired Wilcoxon signed-rank test over the per-class F1 scores. Writes "
            "comparison.md, comparison.json and f1_per_class.png."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run directories; the first is tested against the others")
    parser.add_argument("--out", default=None, help="output folder (default: FIRST_RUN/comparison)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="evaluated split to compare (default test)")
    parser.add_argument(
        "--wilcoxon-method", choices=("approx", "exact", "auto"), default="approx",
        help="p-value: normal approximation without continuity correction as in the paper (default), or scipy's exact/auto",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from protloc.evaluation.compare import compare_runs, render_markdown, write_comparison

    tables = compare_runs(args.run_dirs, split=args.split, wilcoxon_method=args.wilcoxon_method)
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "comparison"
    paths = write_comparison(tables, out)
    print(render_markdown(tables))
    print(f"comparison written to {out}/ ({', '.join(p.name for p in paths.values())})")
    return 0
