"""`protloc predict`: class probabilities for images, folders and data sets in any supported format."""

from __future__ import annotations

import sys
import warnings
from functools import partial
from pathlib import Path

from protloc.data.limits import add_max_pixels_argument
from protloc.commands.options import add_precision_argument, add_strict_argument, skipped_exit
from protloc.devices import add_device_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict protein locations for images, folders or data sets",
        description="Predict the 13 class probabilities of each sample. Output format by extension: "
        ".csv, .jsonl or .parquet. An interrupted run resumes without redoing finished images.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="channel files of one sample, a multi-channel TIFF/NPZ, a folder or a data set")
    parser.add_argument("--model", default="pretrained", help="'pretrained', a model file or a training run folder")
    parser.add_argument("--out", default="predictions.csv", help="output file (.csv, .jsonl, .parquet)")
    parser.add_argument("--format", dest="input_format", choices=["channels", "npz", "kaggle-hpa"],
                        help="input format (detected when omitted)")
    parser.add_argument("--whole-image", action="store_true",
                        help="one pass over the whole image (GapNet-PL) instead of averaging covering patches")
    parser.add_argument("--patch-size", type=int, help="patch size (default: the model's training crop)")
    parser.add_argument("--tta", action="store_true", help="average over flips and 90° rotations")
    parser.add_argument("--maps", metavar="DIR", help="write localisation-map overlays (PNG) to DIR")
    parser.add_argument("--batch-size", type=int, default=4, help="patches per forward pass")
    add_precision_argument(parser, default="fp32")
    parser.add_argument("--compile-selu", action="store_true",
                        help="GapNet-PL: SELU as one compiled kernel for any run (by default runs of "
                        "500 images or more compile it; docs/precision.md)")
    parser.add_argument("--pixel-size", type=float, metavar="UM",
                        help="µm per pixel of the inputs (default: stated by the files, e.g. TIFF resolution tags, "
                        "or implied by the layout, e.g. Kaggle 2018 PNGs); inputs are rescaled to the model's")
    # hook (issue 14): options of the OME-TIFF / OME-Zarr readers
    parser.add_argument("--channels", metavar="MAPPING",
                        help="OME inputs: which channel is which when names are missing or unusual, e.g. "
                        "'DAPI=nucleus,Tub=microtubules,Calr=er,GFP=protein' or positional 'protein,nucleus,er,microtubules'")
    parser.add_argument("--projection", choices=["max", "mean"],
                        help="OME inputs: project Z-stacks and time series (refused without it)")
    parser.add_argument("--allow-sparse-zarr", action="store_true",
                        help="OME-Zarr inputs: read chunks missing from the store as its fill value (for stores "
                        "written sparse on purpose; by default a missing chunk skips the image with its reason)")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    add_device_argument(parser)
    add_strict_argument(parser)
    add_max_pixels_argument(parser)
    # --cells: the per-cell outputs of `protloc cells` (the same library call, protloc.cells.run_cells)
    from protloc.commands.cells import add_cell_arguments

    group = parser.add_argument_group("per cell (--cells; as `protloc cells`)")
    group.add_argument("--cells", action="store_true",
                       help="segment cells (or read --masks) and write one row per cell to --out (.csv or .parquet), "
                       "an AnnData file <out>.h5ad and the label images; --maps then draws the cell outlines")
    add_cell_arguments(group)
    from protloc.distributed import add_cluster_arguments

    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


# Options that only mean something per image, and the per-cell ones that need --cells.
_IMAGE_ONLY = (("whole_image", "--whole-image"), ("tta", "--tta"), ("patch_size", "--patch-size"),
               ("compile_selu", "--compile-selu"))
_CELLS_ONLY = (("masks", "--masks"), ("embeddings", "--embeddings"), ("scoring", "--per-cell"),
               ("image_prior", "--image-prior"), ("nucleus_diameter", "--nucleus-diameter"))




def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"protloc: warning: {message}", file=sys.stderr)


def run(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("once", RuntimeWarning)
        warnings.showwarning = _one_line
        return _predict(args)


def _predict(args) -> int:
    from protloc.distributed import cluster_spec
    from protloc.errors import ProtlocError
    from protloc.inference.batch import run_batch_prediction
    from protloc.inference.precision import check_precision

    if args.cells:
        return _predict_cells(args)
    given = [flag for name, flag in _CELLS_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise ProtlocError(f"{given[0]} is a per-cell option: add --cells")
    check_precision(args.precision, allow_auto=True)
    if args.compile_selu:
        from protloc.inference.gapnet_pl_fast import use_compiled_selu

        use_compiled_selu()
    if (spec := cluster_spec(args)) is not None:  # the same rows, computed in shards on a Dask cluster
        from protloc.distributed import predict

        result = predict(spec, args.inputs, args.model, args.out, device=args.device, precision=args.precision,
                         input_format=args.input_format,
                         reader_options=_ome_reader_options(args), shard_size=args.shard_size,
                         progress=sys.stderr.isatty(), max_pixels=args.max_pixels, options={
                             "whole_image": args.whole_image, "tta": args.tta, "patch_size": args.patch_size,
                             "batch_size": args.batch_size,
                             "pixel_size": args.pixel_size, "compile_selu": args.compile_selu,
                             "maps_dir": None if args.maps is None else str(Path(args.maps).absolute())})
        return _report(args, result)
    result = run_batch_prediction(
        args.inputs, args.model, args.out, whole_image=args.whole_image, tta=args.tta, maps_dir=args.maps,
        patch_size=args.patch_size, batch_size=args.batch_size, workers=args.workers, device=args.device,
        input_format=args.input_format, progress=sys.stderr.isatty(), precision=args.precision,
        pixel_size=args.pixel_size, max_pixels=args.max_pixels,
        reader_options=_ome_reader_options(args),
    )
    return _report(args, result)


def _report(args, result) -> int:
    print(f"predicted {result.predicted} image(s), {result.already_done} already done -> {result.out}")
    return skipped_exit(args, [(f["id"], f["reason"]) for f in result.failures], result.errors_file)


def _predict_cells(args) -> int:
    """`protloc predict --cells`: the per-cell outputs, through the library call of `protloc cells`."""
    from protloc.cells.pipeline import report, run_cells
    from protloc.commands.cells import cell_options
    from protloc.errors import ProtlocError

    given = [flag for name, flag in _IMAGE_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise ProtlocError(f"{given[0]} is an image-level option: the per-cell path (--cells) makes one "
                           "whole-image pass of its own")
    from protloc.distributed import cells, cluster_spec

    run = run_cells if (spec := cluster_spec(args)) is None else partial(cells, spec, shard_size=args.shard_size)
    result = run(
        args.inputs, args.model, args.out, maps_dir=args.maps, device=args.device, input_format=args.input_format,
        pixel_size=args.pixel_size, reader_options=_ome_reader_options(args), progress=sys.stderr.isatty(),
        precision=args.precision, max_pixels=args.max_pixels, **cell_options(args),
    )
    report(result, args.out)
    return skipped_exit(args, result.failures, result.errors_file, "image(s)")


def _ome_reader_options(args) -> dict:
    from protloc.data.formats import describe_ome
    from protloc.data.formats.ome import reader_options

    options = reader_options(channels=args.channels, projection=args.projection,
                             allow_sparse=args.allow_sparse_zarr)
    for line in describe_ome(args.inputs, options):  # which channel is which, and the pixel size
        print(line, file=sys.stderr)
    return options
