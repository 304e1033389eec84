"""``protloc pretrained import|fetch|info``: the GapNet-PL weights published by the paper's authors."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrained", help="import or download the published GapNet-PL weights",
        description="The GapNet-PL weights published by the paper's authors (TensorFlow checkpoint, "
                    "BSD-2-Clause), imported into protloc's model format. Other commands use them "
                    "as --model pretrained.",
    )
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])
    actions = parser.add_subparsers(dest="pretrained_command", metavar="ACTION")

    imp = actions.add_parser(
        "import", help="import a TensorFlow GapNet-PL checkpoint folder into a protloc model file",
        description="Read the TensorBundle checkpoint (PREFIX.index + PREFIX.data-*) in DIR without "
                    "TensorFlow, check every tensor's crc32c, map it onto gapnet-pl (input channels "
                    "reordered from the checkpoint's nucleus, protein, microtubules, ER into the "
                    "canonical nucleus, microtubules, ER, protein) and write a protloc model file.",
    )
    imp.add_argument("checkpoint", metavar="DIR", help="folder with the checkpoint files (or its PREFIX)")
    imp.add_argument("--out", metavar="FILE", default=None,
                     help="model file to write (default: the user cache, so that --model pretrained finds it)")
    imp.set_defaults(handler=run_import)

    fetch = actions.add_parser(
        "fetch", help="download the published weights, verify their sha256 and import them into the cache",
    )
    fetch.add_argument("--url", metavar="BASE", default=None,
                       help="base URL of the checkpoint files (default: $PROTLOC_PRETRAINED_URL or the "
                            "authors' GitHub repository)")
    fetch.add_argument("--force", action="store_true", help="download and import again even if cached")
    fetch.add_argument("--out", metavar="FILE", default=None, help="model file to write (default: the user cache)")
    fetch.add_argument("--retries", type=int, default=3, help="attempts after a broken transfer (default 3)")
    fetch.set_defaults(handler=run_fetch)

    info = actions.add_parser("info", help="describe an imported model file (default: the cached one)")
    info.add_argument("file", metavar="FILE", nargs="?", default=None,
                      help="protloc model file, or a TensorFlow checkpoint folder to list its variables")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=run_info)


def _print_summary(summary: dict) -> None:
    release = "the published release" if summary.get("published_release") else "NOT the published release (sha256 differs)"
    print(f"wrote {summary['out']}: gapnet-pl, {summary['parameters']:,} parameters, "
          f"training step {summary['training_step']}, inputs are {release}, {summary['seconds']:.2f} s")


def run_import(args) -> int:
    from protloc.pretrained.fetch import default_cache_file
    from protloc.pretrained.importer import import_checkpoint

    out = args.out or default_cache_file()
    _print_summary(import_checkpoint(args.checkpoint, out))
    return 0


def run_fetch(args) -> int:
    from protloc.errors import ProtlocError
    from protloc.pretrained.fetch import fetch_pretrained

    if args.retries < 0:
        raise ProtlocError("--retries must be 0 or more")
    summary = fetch_pretrained(args.url, out=args.out, force=args.force, retries=args.retries)
    if not summary["downloaded"]:
        print(f"{summary['out']} is already there (use --force to download it again)")
        return 0
    print(f"downloaded from {summary['url']}, sha256 verified")
    _print_summary(summary)
    return 0


def run_info(args) -> int:
    from pathlib import Path

    from protloc.pretrained.fetch import resolve_pretrained

    path = Path(args.file) if args.file else resolve_pretrained()
    if path.is_dir() or path.suffix == ".index" or ".data-" in path.name:
        return _info_checkpoint(path, args.json)
    from protloc.model_file import read_model_file

    payload = read_model_file(path)
    parameters = sum(int(t.numel()) for t in payload["state_dict"].values())
    described = {
        "file": str(path),
        "model": payload["model"],
        "parameters": parameters,
        "label_set": payload["label_set"],
        "classes": payload["classes"],
        "channels": payload["channels"],
        "normalization": payload["normalization"],
        "crop_size": payload["crop_size"],
        "thresholds": payload["thresholds"],
        "source": payload["source"],
    }
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    print(f"{path}: {payload['model']}, {parameters:,} parameters, crop size {payload['crop_size']}")
    print(f"  input channels: {', '.join(payload['channels'])}; normalization: {payload['normalization']}")
    print(f"  classes ({payload['label_set']}): {'; '.join(payload['classes'])}")
    source = payload.get("source") or {}
    for key in ("kind", "repository", "commit", "license", "published_release", "training_step",
                "checkpoint_channel_order", "checkpoint_channel_order_reason", "imported_by"):
        if key in source:
            value = source[key]
            print(f"  {key}: {', '.join(value) if isinstance(value, list) else value}")
    for name, meta in (source.get("files") or {}).items():
        print(f"  file {name}: {meta['bytes']} bytes, sha256 {meta['sha256']}")
    return 0


def _info_checkpoint(path, as_json: bool) -> int:
    from protloc.pretrained.tensorbundle import read_tensor_bundle

    bundle = read_tensor_bundle(path)
    rows = [{"name": e.name, "dtype": e.dtype_name, "shape": list(e.shape)} for e in
            (bundle.entries[n] for n in bundle.names())]
    if as_json:
        print(json.dumps({"checkpoint": str(bundle.prefix), "variables": rows}, indent=2))
        return 0
    print(f"{bundle.prefix}: TensorFlow checkpoint, {len(rows)} variables, {bundle.header.num_shards} shard(s)")
    for row in rows:
        print(f"  {row['name']}  {row['dtype']}  {row['shape']}")
    return 0
