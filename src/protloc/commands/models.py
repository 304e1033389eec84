"""``protloc models``: the networks of the comparison, their size, paper settings and speed.

The parameter column is the paper's Table 7 (4 channels, 13 classes, 1024×1024 input), counted on
PyTorch's ``meta`` device so that DeepLoc's 200 M parameters are never allocated for it. The time
column is one forward+backward pass (the model's own loss) on a batch of one at ``--crop``, in
training mode, after one untimed warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from protloc.devices import add_device_argument, resolve_device

DEFAULT_CROP = 128
NUM_CLASSES = 13
IN_CHANNELS = 4


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the networks with parameter counts, paper settings and forward+backward time",
        description=(
            "List the networks: parameters (4 channels, 13 classes, 1024x1024 input), the input size "
            "they were designed for, the paper's learning rate and batch size, and the measured time "
            "of one forward+backward pass on a batch of one at --crop. Networks whose dense layers "
            "fix the input size are rebuilt for the crop to be timed (noted in the table)."
        ),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these networks (default: all)")
    parser.add_argument(
        "--crop",
        type=int,
        default=DEFAULT_CROP,
        help=f"square crop size for the timing, in pixels (default {DEFAULT_CROP}; the paper trained on 1024)",
    )
    add_device_argument(parser)
    parser.add_argument("--no-timing", action="store_true", help="skip the forward+backward measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def parameter_count(name: str, **options) -> int:
    """Parameters of a network without allocating it (built on the meta device)."""
    import torch

    from protloc.models import create_model
    from protloc.models.base import count_parameters

    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, **options)
    return count_parameters(model)


def time_forward_backward(name: str, crop: int, device) -> tuple[float | None, int | None, str]:
    """Seconds for one training step's forward+backward at ``crop``; (None, None, why) if impossible."""
    import torch

    from protloc.errors import ProtlocError
    from protloc.models import create_model, model_class
    from protloc.models.base import count_parameters

    options = {}
    note = ""
    paper = _paper_of(name)
    if paper.fixed_input_size and crop != paper.input_size:
        options["input_size"] = crop
    try:
        with torch.device("meta"):
            timed_count = count_parameters(model_class(name)(num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, **options))
        if options:
            note = f"dense layers built for {crop}x{crop}: {timed_count:,} parameters"
        torch.manual_seed(0)
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, **options).to(device).train()
        x = torch.randn(1, IN_CHANNELS, crop, crop, device=device)
        targets = torch.zeros(1, NUM_CLASSES, device=device)
        targets[0, ::3] = 1.0

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model.loss(model.forward_with_aux(x), targets).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()  # warm-up: allocator, kernel selection
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    except ProtlocError as exc:
        return None, None, f"skipped: {exc}"
    except (RuntimeError, ValueError) as exc:
        # e.g. a crop too small for the network's pooling, or out of memory
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, None, f"skipped at crop {crop}: {first_line}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return seconds, timed_count, note


def _paper_of(name: str):
    import torch

    from protloc.models import create_model

    with torch.device("meta"):
        return create_model(name, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS).paper


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from protloc.errors import ProtlocError
    from protloc.models import list_models

    names = args.names or list_models()
    unknown = [name for name in names if name not in list_models()]
    if unknown:
        raise ProtlocError(f"unknown model {unknown[0]!r}; choose among {', '.join(list_models())}")
    if args.crop < 1 or args.crop > 16384:
        raise ProtlocError(f"--crop must be between 1 and 16384 pixels, got {args.crop}")
    device = resolve_device(args.device)

    rows = []
    for name in tqdm(names, desc="timing" if not args.no_timing else "counting", unit="model",
                     disable=not sys.stderr.isatty(), file=sys.stderr):
        paper = _paper_of(name)
        row = {
            "name": name,
            "parameters": parameter_count(name),
            "input_size": paper.input_size,
            "fixed_input_size": paper.fixed_input_size,
            "learning_rate": paper.learning_rate,
            "batch_size": paper.batch_size,
            "dropout": paper.dropout,
            "crop": None if args.no_timing else args.crop,
            "forward_backward_seconds": None,
            "timed_parameters": None,
            "note": "",
        }
        if not args.no_timing:
            seconds, timed_count, note = time_forward_backward(name, args.crop, device)
            row.update(forward_backward_seconds=seconds, timed_parameters=timed_count, note=note)
        rows.append(row)

    environment = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps({"crop": None if args.no_timing else args.crop, **environment, "models": rows}, indent=2))
        return 0
    print(_table(rows, args, environment))
    return 0


def _table(rows: list[dict], args: argparse.Namespace, environment: dict) -> str:
    time_header = "fwd+bwd" if args.no_timing else f"fwd+bwd @{args.crop}px"
    header = ["model", "parameters", "input", "lr", "batch", time_header]
    lines = []
    notes = []
    for row in rows:
        size = f"{row['input_size']}x{row['input_size']}" + (" fixed" if row["fixed_input_size"] else " any")
        if row["forward_backward_seconds"] is None:
            timing = "-"
        else:
            timing = f"{row['forward_backward_seconds'] * 1000:,.0f} ms"
        if row["note"]:
            marker = "-" if row["forward_backward_seconds"] is None else "*"
            notes.append(f"{marker} {row['name']}: {row['note']}")
            timing += " *" if marker == "*" else ""
        lines.append([row["name"], f"{row['parameters']:,}", size, f"{row['learning_rate']:g}", str(row["batch_size"]), timing])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    right = {1, 3, 4, 5}

    def fmt(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
    out.append("")
    out.append("parameters: 4 input channels, 13 classes, 1024x1024 input (paper Table 7).")
    if not args.no_timing:
        out.append(
            f"fwd+bwd: one training step (model's own loss) on a batch of one, {args.crop}x{args.crop}, after a "
            f"warm-up; {environment['device']}, {environment['threads']} threads, torch {environment['torch']}."
        )
    out.extend(notes)
    return "\n".join(out)
