"""`protloc bench`: speed benchmarks with ratios against baselines measured in the same run.

The benchmark code is the installed package ``protloc.bench``; this command is a thin layer over it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from protloc.bench.common import DEFAULT_SECTIONS, SECTIONS
from protloc.errors import ProtlocError
from protloc.files import atomic_write_text

# not a timing: a finished demo's figures against the range the documentation states (--run, --expected)
DEMO_CHECK = "demo-check"
DEFAULT_EXPECTED = "benchmarks/demo-headline.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark inference, training, data path, platform, scaling and onnxruntime (ratios vs baselines)",
        description="Measure GapNet-PL inference (patches and whole image, fp32 and bf16, each speed lever), "
        "a training step per network, random crops from the prepared cache against TIFF decoding, the web "
        "platform under concurrent requests, how time and memory grow with image and batch size, single cells "
        "(segmentation + per-cell prediction against image-level prediction), and the "
        "ONNX export under onnxruntime against the fast path. "
        "Every figure comes with a baseline measured in the same run. Results go to a JSON file; "
        "the Markdown tables are printed.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute; for tests)")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file (default bench-results.json)")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but cells-real, "
                        "which measures per-cell answers on mosaics of real labelled fields: give --data); or "
                        f"{DEMO_CHECK} alone: a finished demo against its stated range")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="cells-real: labelled real fields in the Kaggle 2018 layout (default "
                        "../shared/real-hpa/kaggle2018-train-101 beside the repository)")
    parser.add_argument("--model", default=None,
                        help="GapNet-PL model file or 'pretrained' (default: the imported pretrained "
                        "weights when present, else random weights; cells-real: pretrained)")
    parser.add_argument("--tf-result", default=None, metavar="FILE",
                        help="JSON written by tools/tf_benchmark.py: the authors' TensorFlow graph in the table")
    parser.add_argument("--repeats", default=None, help="timed rounds per variant (default 7, --quick 2)")
    parser.add_argument("--threads", default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile variants (minutes of compilation on a small CPU)")
    parser.add_argument("--fields", default=None, help="cluster section: number of fields (default 64, --quick 8)")
    parser.add_argument("--size", default=None, help="cluster section: field size in pixels (default 2048, --quick 256)")
    from protloc.inference.precision import CHOICES

    parser.add_argument("--precision", choices=CHOICES, default=None,
                        help="platform section: uploads/s of 1024² fields with cells at this precision (auto: the "
                        "fastest native one) against fp32 in the same run, instead of the full platform section")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--run", default=None, metavar="DIR",
                        help=f"section {DEMO_CHECK}: a finished `protloc demo` folder (or its runs/gapnet-pl) to "
                        "compare with the stated range")
    parser.add_argument("--expected", default=DEFAULT_EXPECTED, metavar="FILE",
                        help=f"section {DEMO_CHECK}: the stated ranges (default {DEFAULT_EXPECTED})")
    parser.set_defaults(handler=run)


def _positive_int(value, option: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ProtlocError(f"{option} must be a positive integer, got {value!r}")
    return number


def run_demo_check(args) -> int:
    """Exit 0 when every stated figure is inside its range, 1 when one is not (a failed check)."""
    from protloc.bench.demo_check import check_demo, markdown

    if args.run is None:
        raise ProtlocError(f"--sections {DEMO_CHECK} needs --run DIR (a finished protloc demo folder)")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ProtlocError(f"--out must name a .json file, got {out.name}")
    result = check_demo(args.run, args.expected)
    atomic_write_text(out, json.dumps({"protloc_bench": 1, "sections": {DEMO_CHECK: result}}, indent=1) + "\n")
    text = markdown(result)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    print(text)
    print(f"\nresults -> {out}")
    return 0 if result["all_inside"] else 1


def run(args) -> int:
    if DEMO_CHECK in [s.strip() for s in args.sections.split(",")]:
        if args.sections.strip() != DEMO_CHECK:
            raise ProtlocError(f"--sections {DEMO_CHECK} runs alone (it times nothing)")
        return run_demo_check(args)
    repeats = _positive_int(args.repeats, "--repeats")
    threads = _positive_int(args.threads, "--threads")
    fields, size = _positive_int(args.fields, "--fields"), _positive_int(args.size, "--size")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ProtlocError(f"--out must name a .json file, got {out.name}")
    if args.data is not None and not Path(args.data).is_dir():
        raise ProtlocError(f"no data folder {args.data}")
    if args.tf_result is not None and not Path(args.tf_result).is_file():
        raise ProtlocError(f"no TensorFlow result file {args.tf_result}")
    if args.model is not None and args.model != "pretrained" and not Path(args.model).is_file():
        raise ProtlocError(f"no model file {args.model}")
    import protloc.bench as bench

    sections = bench.parse_sections(args.sections)
    settings = bench.Settings(quick=args.quick, model=args.model, tf_result=args.tf_result, repeats=repeats,
                              compile=args.compile, progress=sys.stderr.isatty(), threads=threads,
                              fields=fields, size=size, precision=args.precision, data=args.data, out=str(out))
    results = bench.run(sections, settings)
    # atomic: an interrupted run never leaves a half-written results file over an earlier one
    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    text = bench.markdown(results)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    print(text)
    print(f"\nresults -> {out}")
    return 0
