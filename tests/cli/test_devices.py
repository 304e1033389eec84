"""The one --device rule: every command that takes --device takes it the same way, default auto."""

from __future__ import annotations

import argparse

import pytest
import torch

from protloc.cli import build_parser
from protloc.devices import DEFAULT_DEVICE, resolve_device
from protloc.errors import ProtlocError


def _device_actions(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _device_actions(sub, path + (name,))
        elif "--device" in action.option_strings:
            yield " ".join(path), action


def test_every_command_has_the_same_device_option():
    found = dict(_device_actions(build_parser()))
    assert {"predict", "evaluate", "cells", "serve", "worker", "train", "demo", "models"} <= set(found)
    for command, action in found.items():
        assert action.choices is None, command  # cuda:N is a device too
        assert "default:" in action.help and "cuda:N" in action.help, command
        if command in ("train", "crossval"):  # an options file may set it; the flag only overrides
            assert action.default is None and "else auto" in action.help
        else:
            assert action.default == DEFAULT_DEVICE == "auto", command


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ProtlocError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ProtlocError, match="no CUDA device"):
            resolve_device("cuda:1")
