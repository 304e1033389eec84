"""What the napari plugin tests need, and the one rule for when it is missing.

They need the extra ``protloc[napari-test]`` (napari with PyQt5, pytest-qt, pytest-xvfb) and a display:
Debian's ``xvfb`` (pytest-xvfb starts it; ``xvfb-run -a`` works too) with Mesa's OpenGL (``libgl1-mesa-dri``);
Qt's ``offscreen`` platform gives napari's canvas no OpenGL. Locally a missing piece skips them; in CI
(``CI=true``) it fails the run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.conftest import in_ci, shared_dir

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def missing(reason: str, module_level: bool = False) -> None:
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_napari_and_display() -> None:
    """Call at module level before any napari import: skip locally, fail under CI=true."""
    absent = [name for name in ("napari", "pytestqt", "PyQt5") if importlib.util.find_spec(name) is None]
    if absent:
        missing(f"napari plugin tests need pip install -e '.[napari-test]' (missing: {', '.join(absent)})", True)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        missing("napari plugin tests need a display: apt-get install xvfb xauth libgl1-mesa-dri "
                "(pytest-xvfb starts Xvfb), or run pytest under xvfb-run -a", True)


def shared_path(*parts: str) -> Path:
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        missing(f"{path} not found: ../shared must sit beside the repository")
    return path
