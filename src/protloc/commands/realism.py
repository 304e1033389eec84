"""`protloc realism`: how real the synthetic fields look to networks on either side of the divide."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM, KAGGLE2018_PIXEL_SIZE_UM

    parser = subparsers.add_parser(
        "realism",
        help="measure the synthetic data's realism: published weights on synthetic fields, and a "
        "synthetic-trained model on real HPA fields (per-class ROC AUC)",
        description="(1) The published GapNet-PL weights (trained on real HPA fields) on fresh synthetic "
        "fields, rescaled from the generator's pixel size to the weights'; (2) a model trained on synthetic "
        "fields (e.g. the demo's) on real labelled HPA fields in Kaggle's layout, rescaled to the generator's "
        "pixel size, Kaggle's 28 classes mapped onto the paper's 13. The real set is used for this "
        "measurement only, never for tuning. Writes OUT/realism.json, realism.md (the tables), realism.png "
        "and the probabilities.",
    )
    parser.add_argument("--published", default=None, metavar="MODEL",
                        help="the published weights: 'pretrained' or an imported model file (skip if absent)")
    parser.add_argument("--trained", default=None, metavar="MODEL",
                        help="a model trained on synthetic fields, e.g. demo-out/runs/gapnet-pl")
    parser.add_argument("--real", default=None, metavar="DIR",
                        help="real labelled fields in Kaggle 2018's layout, e.g. ../shared/real-hpa/kaggle2018-train-101")
    parser.add_argument("--fields", type=int, default=200, help="synthetic fields for (1) (default 200)")
    parser.add_argument("--size", type=int, default=256, help="side of those fields in px (default 256)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="seed of those fields (default 1000: not the demo's training data)")
    parser.add_argument("--network-pixel-size", type=float, default=HPA_CONFOCAL_PIXEL_SIZE_UM,
                        help=f"µm/px the published weights were trained at (default {HPA_CONFOCAL_PIXEL_SIZE_UM})")
    parser.add_argument("--real-pixel-size", type=float, default=KAGGLE2018_PIXEL_SIZE_UM,
                        help=f"µm/px of the real fields (default {KAGGLE2018_PIXEL_SIZE_UM}: Kaggle's 512² PNGs)")
    parser.add_argument("--out", default="realism", help="output folder (default realism/)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.errors import ProtlocError
    from protloc.evaluation.realism import markdown, run_realism

    if args.fields < 2 or args.size < 32:
        raise ProtlocError(f"--fields must be at least 2 and --size at least 32, got {args.fields} and {args.size}")
    for name, value in (("--network-pixel-size", args.network_pixel_size), ("--real-pixel-size", args.real_pixel_size)):
        if not 0.01 <= value <= 10:
            raise ProtlocError(f"{name} must be a pixel size in µm from 0.01 to 10, got {value}")
    results = run_realism(args.out, published=args.published, trained=args.trained, real=args.real,
                          fields=args.fields, size=args.size, seed=args.seed,
                          network_pixel_size=args.network_pixel_size, real_pixel_size=args.real_pixel_size,
                          progress=sys.stderr.isatty())
    print(markdown(results))
    print(f"tables in {args.out}/realism.md, figure {args.out}/realism.png, probabilities as .npz beside them")
    return 0
