"""The one ``--device`` rule of every command, and the one place a device name becomes a torch device.

Every command that runs a network takes ``--device`` with the same default, ``auto``: the CUDA GPU
when PyTorch sees one, else the CPU. ``cpu``, ``cuda`` and ``cuda:N`` name one explicitly; asking
for CUDA where there is none is an error, not a silent fall-back to the CPU.
"""

from __future__ import annotations

from protloc.errors import ProtlocError

DEFAULT_DEVICE = "auto"
DEVICE_HELP = "auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda or cuda:N"


def add_device_argument(parser, *, config_file: bool = False) -> None:
    """``--device`` for a command. ``config_file``: the command also reads an options file (``train``),
    so the flag is only an override there and the file's device, else ``auto``, is the default."""
    default = None if config_file else DEFAULT_DEVICE
    said = "the options file's, else auto" if config_file else DEFAULT_DEVICE
    parser.add_argument("--device", default=default, metavar="DEVICE", help=f"{DEVICE_HELP} (default: {said})")


def resolve_device(spec=None):
    """A device name (``auto``/None, ``cpu``, ``cuda``, ``cuda:N``) or torch device -> ``torch.device``;
    ProtlocError for a name torch does not know or a CUDA device that is not there."""
    import torch

    if isinstance(spec, torch.device):
        device = spec
    elif spec is None or str(spec).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(spec).strip())
        except (RuntimeError, ValueError):
            raise ProtlocError(f"unknown device {str(spec)!r}: use {DEVICE_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ProtlocError(f"device {str(spec)!r} asked for, but PyTorch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ProtlocError(f"device {str(spec)!r} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA "
                               "device(s)")
    return device
