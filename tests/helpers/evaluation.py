"""Helpers of the evaluation tests: the 13 classes in order, and the check that a written figure is a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from protloc.labels import HPA13

CLASSES = list(HPA13.classes)


def assert_png(path: Path, min_bytes: int = 10_000):
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something is drawn
