"""Helpers of the training tests: the command line run in-process, its exit code and stderr."""

from __future__ import annotations

from protloc.cli import main


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err
