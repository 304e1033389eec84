"""The ``protloc`` command: a thin layer over the library.

Each module in ``protloc.commands`` contributes subcommands through ``register(subparsers)``; a
subcommand's handler takes the parsed arguments and returns an exit code. Errors the user can act on
(``ProtlocError``) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from protloc.version import __version__
from protloc.errors import ProtlocError, printable


# CPU features that decide which kernels torch runs (and so how a result may differ between machines)
_ISA_FLAGS = {"avx2": "avx2", "avx512f": "avx512", "avx512_vnni": "avx512-vnni", "avx_vnni": "avx-vnni",
              "avx512_bf16": "avx512-bf16", "amx_bf16": "amx-bf16", "amx_int8": "amx-int8", "amx_tile": "amx-tile"}


def version_text() -> str:
    """``protloc X``, torch's version, and the device: CUDA GPU(s) by name, else the CPU and its ISA."""
    import platform

    import torch

    lines = [f"protloc {__version__}", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"device: cuda ({', '.join(names)})")
    else:
        lines.append("device: cpu (no CUDA device found)")
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    found = [name for flag, name in _ISA_FLAGS.items() if flag in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    lines.append(f"cpu: {cpu}; {torch.get_num_threads()} torch threads; kernels {capability}"
                 + (f"; {' '.join(found)}" if found else ""))
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    # argparse's own version action prints a fixed string; this one asks torch only when called
    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protloc",
        description="Protein localisation in four-channel fluorescence microscopy (HTI) images.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print protloc's and torch's versions and the device found, and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import protloc.commands as commands_pkg

    for module_info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"protloc.commands.{module_info.name}")
        if hasattr(module, "register"):  # a command; the rest are helpers the commands share
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ProtlocError as exc:
        print(f"protloc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("protloc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the file system refused (a file where a folder must go, disk full, no permission)
        print(f"protloc: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2


def _os_error_line(exc: OSError) -> str:
    """``File exists: /out/afile`` rather than ``[Errno 17] File exists: '/out/afile'`` and a traceback."""
    if exc.filename is None:
        return exc.strerror or str(exc)
    names = [printable(str(name)) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{exc.strerror or type(exc).__name__}: {' -> '.join(names)}"
