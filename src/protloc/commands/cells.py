"""`protloc cells` (and `protloc predict --cells`): a prediction and an embedding for every cell (``protloc.cells``)."""

from __future__ import annotations

import sys
from functools import partial

from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cells",
        help="segment cells and predict every cell's protein locations and embedding",
        description="Find the nuclei and cells of each image (or read them from --masks), then give every cell "
        "an embedding and the class probabilities. GapNet-PL averages its three feature maps over each cell's "
        "pixels and reads them with its own dense head (one forward pass per image); other networks predict a "
        "masked crop around each cell. A cell's answer combines its own prediction with its image's, gated by "
        "how much protein the cell holds (--per-cell). Writes the per-cell table (.csv or .parquet), an AnnData "
        "file beside it (<out>.h5ad: obs = the table, X = the embeddings) and the label images (<out>-masks/).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="channel files of one sample, a multi-channel TIFF/NPZ, a folder or a data set")
    parser.add_argument("--model", default="pretrained", help="'pretrained', a model file or a training run folder")
    parser.add_argument("--out", default="cells.csv", help="per-cell table (.csv or .parquet)")
    parser.add_argument("--maps", metavar="DIR", help="write cell outlines coloured by each cell's top class (PNG) to DIR")
    parser.add_argument("--format", dest="input_format", choices=["channels", "npz", "kaggle-hpa"],
                        help="input format (detected when omitted)")
    parser.add_argument("--pixel-size", type=float, metavar="UM",
                        help="µm per pixel of the inputs (default: stated by the files or implied by the layout); "
                        "the network sees each image at the model's pixel size, the masks and the table stay on the input's grid")
    add_device_argument(parser)
    from protloc.commands.options import add_precision_argument

    add_precision_argument(parser, default="fp32")
    from protloc.commands.options import add_strict_argument

    add_strict_argument(parser)
    from protloc.data.limits import add_max_pixels_argument

    add_max_pixels_argument(parser)
    add_cell_arguments(parser)
    from protloc.distributed import add_cluster_arguments

    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def add_cell_arguments(parser) -> None:
    """The per-cell options shared by `protloc cells` and `protloc predict --cells`."""
    from protloc.cells.scoring import DEFAULT_SCORING, SCORINGS

    parser.add_argument("--masks", metavar="DIR|STORE",
                        help="use these label images instead of segmenting: DIR/<id>_cellmask.png|tif "
                        "(and optionally <id>_nucleimask.png|tif), or an OME-Zarr store's NGFF labels")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write image-level embeddings and probabilities (<out>.images.h5ad)")
    parser.add_argument("--per-cell", dest="scoring", choices=SCORINGS, default=None,
                        help=f"each cell's answer (default {DEFAULT_SCORING}: the cell's own and its image's "
                        "probabilities combined, times its protein-signal gates, 0 for a cell without signal; "
                        "chosen on real cells, docs/single-cells.md); own: the cell's own; image: its image's "
                        "(the weak baseline); geometric-mean: own and image, no gate")
    parser.add_argument("--image-prior", action="store_true", help="the same as --per-cell geometric-mean")
    parser.add_argument("--nucleus-diameter", type=float, metavar="PX",
                        help="typical nucleus diameter in pixels (default: estimated from the nucleus channel)")


def cell_options(args) -> dict:
    """The keyword arguments of ``run_cells`` from the shared per-cell options (checked)."""
    from protloc.errors import ProtlocError

    if args.nucleus_diameter is not None and not args.nucleus_diameter > 0:
        raise ProtlocError(f"--nucleus-diameter must be positive, got {args.nucleus_diameter}")
    if args.image_prior and args.scoring not in (None, "geometric-mean"):
        raise ProtlocError(f"--image-prior is --per-cell geometric-mean: it contradicts --per-cell {args.scoring}")
    return {"masks_dir": args.masks, "embeddings": args.embeddings, "image_prior": args.image_prior,
            "scoring": args.scoring, "nucleus_diameter": args.nucleus_diameter}


def run(args) -> int:
    from protloc.cells.pipeline import report, run_cells
    from protloc.distributed import cells, cluster_spec

    spec = cluster_spec(args)  # None: this process; else the same outputs from shards on a Dask cluster
    run_here = run_cells if spec is None else partial(cells, spec, shard_size=args.shard_size)
    result = run_here(
        args.inputs, args.model, args.out, maps_dir=args.maps, device=args.device, input_format=args.input_format,
        pixel_size=args.pixel_size, progress=sys.stderr.isatty(), precision=args.precision,
        max_pixels=args.max_pixels, **cell_options(args),
    )
    report(result, args.out)
    from protloc.commands.options import skipped_exit

    return skipped_exit(args, result.failures, result.errors_file, "image(s)")
