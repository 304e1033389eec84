"""`protloc cells`: segmentation, a prediction and an embedding for every cell (``protloc.cells``)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cells",
        help="segment cells and predict every cell's protein locations and embedding",
        description="Find the nuclei and cells of each image (or read them from --masks), then give every cell "
        "an embedding and the class probabilities. GapNet-PL averages its three feature maps over each cell's "
        "pixels and reads them with its own dense head (one forward pass per image); other networks predict a "
        "masked crop around each cell. Writes the per-cell table (.csv or .parquet), an AnnData file beside it "
        "(<out>.h5ad: obs = the table, X = the embeddings) and the label images (<out>-masks/).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="channel files of one sample, a multi-channel TIFF/NPZ, a folder or a data set")
    parser.add_argument("--model", default="pretrained", help="'pretrained', a model file or a training run folder")
    parser.add_argument("--out", default="cells.csv", help="per-cell table (.csv or .parquet)")
    parser.add_argument("--masks", metavar="DIR",
                        help="use these label images instead of segmenting: DIR/<id>_cellmask.png|tif "
                        "(and optionally <id>_nucleimask.png|tif)")
    parser.add_argument("--maps", metavar="DIR", help="write cell outlines coloured by each cell's top class (PNG) to DIR")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write image-level embeddings and probabilities (<out>.images.h5ad)")
    parser.add_argument("--image-prior", action="store_true",
                        help="report each cell's probabilities combined with its image's (geometric mean): ranks cells "
                        "across images better (README: Single cells), at the price of the cell's own answer")
    parser.add_argument("--nucleus-diameter", type=float, metavar="PX",
                        help="typical nucleus diameter in pixels (default: estimated from the nucleus channel)")
    parser.add_argument("--format", dest="input_format", choices=["channels", "npz", "kaggle-hpa"],
                        help="input format (detected when omitted)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.cells.pipeline import report, run_cells
    from protloc.errors import ProtlocError

    if args.nucleus_diameter is not None and not args.nucleus_diameter > 0:
        raise ProtlocError(f"--nucleus-diameter must be positive, got {args.nucleus_diameter}")
    result = run_cells(
        args.inputs, args.model, args.out, masks_dir=args.masks, maps_dir=args.maps, embeddings=args.embeddings,
        image_prior=args.image_prior, nucleus_diameter=args.nucleus_diameter, device=args.device,
        input_format=args.input_format,
        progress=sys.stderr.isatty(),
    )
    report(result, args.out)
    return 0
