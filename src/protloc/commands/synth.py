"""`protloc synth`: write the embedded default data set (synthetic HTI fields with labels)."""

from __future__ import annotations

import sys
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic four-channel HTI data set (the embedded default data)",
        description="Draw fields of cells with a nucleus, microtubule and ER channel and a protein channel "
        "localised in the compartments named by each sample's labels (the 13 classes of the paper). "
        "Cells are drawn at 0.4 µm per pixel (HPA's confocal fields are about 0.08). Writes "
        "OUT/<id>_<colour>.tif (16-bit), OUT/labels.csv, the per-cell truth OUT/masks/<id>_cellmask.png and "
        "<id>_nucleimask.png (16-bit label images) and OUT/cells.csv (each cell's labels, expressing, mitotic). "
        "The same seed gives the same bytes, whatever the number of workers.",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--samples", type=int, default=1000, help="number of samples (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="image height and width in px (default 512)")
    parser.add_argument("--height", type=int, help="image height in px (overrides --size)")
    parser.add_argument("--width", type=int, help="image width in px (overrides --size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, help="worker processes (default: the CPUs available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier synthetic data set in OUT")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.data.synth.dataset import CELLS_FILE, generate_dataset
    from protloc.data.synth.field import PIXEL_SIZE_UM

    start = time.perf_counter()
    out = generate_dataset(args.out, args.samples, args.size, args.seed, height=args.height, width=args.width,
                           workers=args.workers, overwrite=args.overwrite, progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - start
    height = args.height or args.size
    width = args.width or args.size
    print(f"wrote {args.samples} synthetic samples ({height}x{width}, {PIXEL_SIZE_UM} µm/px) to {out} in "
          f"{elapsed:.1f} s; labels in {out / 'labels.csv'}, per-cell truth in {out / CELLS_FILE} and {out / 'masks'}")
    return 0
