"""``protloc data scan DIR``: index a data set, report the samples it cannot use, write the splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from protloc.data.limits import add_max_pixels_argument

FORMAT_CHOICES = ("channels", "npz", "kaggle-hpa")
MAX_LISTED = 50  # excluded samples listed in the human summary


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and index data sets",
                                 description="Inspect and index HTI data sets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])

    scan = data_sub.add_parser(
        "scan",
        help="index a data folder and report every sample that cannot be used",
        description=(
            "Read every file of a data set, list the samples that cannot be used with the reason "
            "(truncated or unreadable file, missing channel, channels of different shapes, unknown "
            "class, unlabeled id), and write index.json and splits.json (seeded 80/10/10) under "
            "DIR/.protloc/ or --out."
        ),
    )
    scan.add_argument("dir", metavar="DIR", help="data folder")
    scan.add_argument("--format", choices=FORMAT_CHOICES, default=None,
                      help="data format (default: detected: train.csv with Id,Target -> kaggle-hpa, "
                           "*.npz -> npz, else channels)")
    scan.add_argument("--labels", metavar="FILE", default=None,
                      help="labels file (default: labels.csv / train.csv / labels.txt in DIR when present)")
    scan.add_argument("--label-set", metavar="NAME|FILE", default=None,
                      help="hpa13, kaggle28 or a JSON label set (default: kaggle28 for kaggle-hpa, else hpa13)")
    scan.add_argument("--json", action="store_true", help="print the summary as JSON")
    scan.add_argument("--out", metavar="OUTDIR", default=None,
                      help="write index.json and splits.json here instead of DIR/.protloc/")
    scan.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    add_max_pixels_argument(scan)
    scan.set_defaults(handler=run_scan)


def _format_summary(index, summary: dict, splits: dict, single: dict, written: Path | None) -> str:
    from protloc.errors import printable

    lines = [f"{printable(str(index.root))}  (format {index.format}, label set {index.label_set.name})"]
    lines.append(f"valid samples: {summary['valid']}   excluded: {len(summary['excluded'])}")
    if summary["shapes"]:
        lines.append("image sizes:   " + ", ".join(f"{shape} ({n})" for shape, n in summary["shapes"].items()))
    if summary["class_counts"]:
        labelled = sum(1 for e in index.samples if e.labels is not None)
        lines.append(f"labelled: {labelled}   multi-label fraction: {summary['multi_label_fraction']:.3f}")
        width = max(len(name) for name in summary["class_counts"])
        top = max(summary["class_counts"].values()) or 1
        for name, count in summary["class_counts"].items():
            bar = "#" * round(30 * count / top)
            lines.append(f"  {name:<{width}}  {count:>6}  {bar}")
    else:
        lines.append("labels: none (no labels file)")
    lines.append(
        "splits:        " + ", ".join(f"{name} {len(ids)} ({len(single[name])} single-label)"
                                      for name, ids in splits.items())
    )
    if summary["excluded"]:
        lines.append("excluded samples:")
        for item in summary["excluded"][:MAX_LISTED]:
            lines.append(f"  {item['id']}: {item['reason']}")
        if len(summary["excluded"]) > MAX_LISTED:
            lines.append(f"  ... and {len(summary['excluded']) - MAX_LISTED} more (all of them: --json, or "
                         "'excluded' in index.json)")
    if written is not None:
        lines.append(printable(f"wrote {written / 'index.json'} and {written / 'splits.json'}"))
    return "\n".join(lines)


def run_scan(args) -> int:
    from protloc.data.index import INDEX_DIRNAME, scan_dataset, unwritable_reason
    from protloc.errors import ProtlocError, printable
    from protloc.data.splits import make_splits, save_splits, single_label_ids

    index = scan_dataset(args.dir, format=args.format, labels=args.labels, label_set=args.label_set,
                         progress=sys.stderr.isatty(), max_pixels=args.max_pixels)
    splits = make_splits(index, seed=args.seed)
    single = {name: single_label_ids(index, ids) for name, ids in splits.items()}

    out_dir = Path(args.out).expanduser() if args.out else Path(index.root) / INDEX_DIRNAME
    written: Path | None = out_dir
    problem = unwritable_reason(out_dir)
    if problem is None:
        try:
            index.save(out_dir / "index.json")
            save_splits(splits, out_dir / "splits.json", seed=args.seed, index=index)
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem is not None:
        if args.out:
            raise ProtlocError(f"cannot write to {out_dir}: {problem}")
        written = None
        print(f"protloc: note: {printable(str(out_dir))} is not writable ({problem}); nothing was written "
              "(use --out OUTDIR to save the index and splits elsewhere)", file=sys.stderr)

    summary = index.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_summary(index, summary, splits, single, written))
    return 0
