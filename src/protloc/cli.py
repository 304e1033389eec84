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

from protloc import __version__
from protloc.errors import ProtlocError, printable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protloc",
        description="Protein localisation in four-channel fluorescence microscopy (HTI) images.",
    )
    parser.add_argument("--version", action="version", version=f"protloc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import protloc.commands as commands_pkg

    for module_info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"protloc.commands.{module_info.name}")
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
