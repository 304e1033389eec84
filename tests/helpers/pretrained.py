"""Where the published GapNet-PL checkpoint lies, and the mark for tests that need it (pretrained tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import shared_dir

CKPT_DIR = Path(os.environ.get("PROTLOC_GAPNET_CKPT", shared_dir() / "pretrained" / "gapnet-pl"))
INDEX = "gapnet-pl.ckpt.index"
DATA = "gapnet-pl.ckpt.data-00000-of-00001"

needs_checkpoint = pytest.mark.skipif(
    not (CKPT_DIR / INDEX).is_file(), reason=f"published GapNet-PL checkpoint not found in {CKPT_DIR}"
)
