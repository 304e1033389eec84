"""Fixtures of the training tests: a tiny synthetic data set (one per test module, as before the split)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from protloc.data.synth.dataset import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(out, samples=24, size=96, seed=3, workers=1, progress=False)
    return out
