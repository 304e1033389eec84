"""`protloc export`: a model as ONNX, TorchScript or a BioImage Model Zoo (bioimage.io 0.5) package."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a bioimage.io package",
        description="Write a model as ONNX (dynamic height and width for GapNet-PL), TorchScript, or a "
        "BioImage Model Zoo package (format 0.5: rdf.yaml with named channels, pixel size, preprocessing, "
        "test tensors, cover, citation, licence; weights as pytorch_state_dict, TorchScript and ONNX). Each "
        "export is run on test inputs and compared with protloc's own logits.",
    )
    parser.add_argument("model", metavar="MODEL", help="'pretrained', a protloc model file or a training run folder")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript", "bioimageio"])
    parser.add_argument("--out", required=True, help="output file (.onnx, .pt, or .zip for bioimageio)")
    parser.add_argument("--pixel-size", type=float, metavar="UM",
                        help="bioimageio: the pixel size in µm the model expects (default: the one its model "
                        "file records; the published weights: 0.08 µm, HPA's full-resolution fields)")
    parser.add_argument("--author", action="append", metavar="NAME",
                        help="bioimageio: who trained the model (repeatable; default for the published weights: "
                        "the paper's authors)")
    parser.add_argument("--license", metavar="SPDX",
                        help="bioimageio: licence of weights you trained (default CC-BY-4.0; the published "
                        "weights keep their authors' BSD-2-Clause)")
    parser.add_argument("--test-size", type=int, default=256, metavar="PX",
                        help="bioimageio: side of the synthetic test image (default 256)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.export import export_model

    options = {}
    if args.format == "bioimageio":
        options = {"pixel_size_um": args.pixel_size, "authors": args.author, "license": args.license,
                   "test_size": args.test_size}
    result = export_model(args.model, args.format, args.out, **options)
    for line in result.checks:
        print(f"  {line}")
    print(f"exported {args.model} as {result.format} -> {result.out}")
    return 0
