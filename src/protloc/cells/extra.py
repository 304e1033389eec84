"""Whether single-cell work can run here: segmentation needs scikit-image (the ``cells`` extra).
Asked by the platform before it segments an upload and by the expert study before it draws outlines."""

from __future__ import annotations


def missing_extra() -> str | None:
    """Why cells cannot be computed here, or None: segmentation needs scikit-image (the ``cells``
    extra; its anndata is for ``protloc cells``' files, not needed here, and not imported)."""
    try:
        import skimage  # noqa: F401
    except ImportError:
        return "cells need scikit-image: pip install 'protloc[cells]'"
    return None
