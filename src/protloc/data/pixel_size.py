"""Pixel size (µm per pixel) of the data and of a model, and rescaling one to the other.

A network learns structures at the scale it was trained at: the published GapNet-PL weights saw HPA
confocal fields at their full resolution (the paper, section 2: "samples were not resized but kept
at their original resolution"; the HPA Cell Atlas confocal fields are about 0.08 µm per pixel at
2048², ../shared/reference/field-2026.md). The same field downscaled by Kaggle to 512² (Kaggle 2018
layout) is 0.32 µm per pixel: fed as it is, every cell looks four times smaller than anything the
network has seen. So each input is rescaled to the model's pixel size before the network sees it.

Where a sample's pixel size comes from, in order: ``--pixel-size`` (the user's word); the file's own
metadata (TIFF XResolution/YResolution with ResolutionUnit, OME-XML PhysicalSizeX, NGFF scale); the
layout (Kaggle 2018 PNGs: ``KAGGLE2018_PIXEL_SIZE_UM``; HPA's 2048² web-download JPEGs: 0.08). The
formats read it with the sample (``protloc.data.formats``); this module holds the numbers and the
rescaling. Otherwise it is unknown: nothing is rescaled and the caller warns once, saying how to give it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from protloc.errors import ProtlocError

# HPA Cell Atlas confocal fields (63x objective), 2048x2048 or 3072x3072: about 0.08 µm per pixel.
HPA_CONFOCAL_PIXEL_SIZE_UM = 0.08
HPA_CONFOCAL_SOURCE = ("HPA Cell Atlas confocal fields at full resolution, about 0.08 µm/px "
                       "(../shared/reference/field-2026.md; the paper trained on unresized fields)")
# Kaggle 2018 resized the HPA fields to 512x512: a 2048² field becomes 4x coarser. (A 3072² original
# would be 6x; the PNG does not say which, and 2048² is the common size.)
KAGGLE2018_SIZE = 512
KAGGLE2018_PIXEL_SIZE_UM = HPA_CONFOCAL_PIXEL_SIZE_UM * 4
KAGGLE2018_SOURCE = ("Kaggle 2018 layout: HPA confocal fields (~0.08 µm/px at 2048²) downscaled to 512², "
                     "so 4 x 0.08 = 0.32 µm/px (a 3072² original would be 0.48)")
# HPA's web downloads (<plate>_<well>_<field>_<colour>.jpg) are the confocal fields at full size.
HPA_DOWNLOAD_SIZE = 2048
HPA_DOWNLOAD_SOURCE = "HPA web-download layout: 2048² confocal fields at full resolution, ~0.08 µm/px"
# Rescaling by less than this relative amount is not worth the interpolation.
TOLERANCE = 0.02


@dataclass(frozen=True)
class PixelSize:
    """µm per pixel (None = unknown) and where that figure comes from."""

    um: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.um is not None


UNKNOWN = PixelSize(None, "unknown")


# What counts as a pixel size, given (``--pixel-size``) or read from a file (protloc.data.formats.physical).
PIXEL_SIZE_BOUNDS_UM = (0.001, 1000.0)


def check_pixel_size(value, what: str = "--pixel-size") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProtlocError(f"{what} must be a number of µm per pixel, got {value!r}") from None
    low, high = PIXEL_SIZE_BOUNDS_UM
    if not np.isfinite(number) or not low <= number <= high:
        raise ProtlocError(f"{what} must be between {low:g} and {high:g} µm per pixel, got {value}")
    return number


def scale_factor(data_um: float | None, model_um: float | None) -> float:
    """How much to enlarge the data so one pixel spans the model's pixel size (1.0 when either is unknown)."""
    if data_um is None or model_um is None:
        return 1.0
    factor = data_um / model_um
    return 1.0 if abs(factor - 1.0) < TOLERANCE else factor


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """A canonical sample [C, H, W] resized by ``factor`` (bilinear; area-averaged when shrinking)."""
    if factor == 1.0:
        return image
    import torch
    from torch.nn import functional as F

    height, width = image.shape[-2:]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    with torch.no_grad():
        if factor < 1.0:
            out = F.interpolate(tensor, size=size, mode="area")
        else:
            out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return out[0].numpy()


def describe(data: PixelSize, model_um: float | None) -> str:
    """The one line a run prints about pixel sizes."""
    if model_um is None:
        return "pixel size: the model does not record one; inputs are used as they are"
    if not data.known:
        return (f"pixel size: unknown for this data; inputs are used as they are (the model expects "
                f"{model_um:g} µm/px); give --pixel-size UM to rescale")
    factor = scale_factor(data.um, model_um)
    if factor == 1.0:
        return f"pixel size: data {data.um:g} µm/px ({data.source}) matches the model's {model_um:g} µm/px"
    return (f"pixel size: data {data.um:g} µm/px ({data.source}); model {model_um:g} µm/px: "
            f"inputs rescaled {factor:g}x before the network")


def warn_unknown(model_um: float | None) -> None:
    """The warning a run prints once when an input's pixel size is unknown."""
    if model_um is None:
        return
    print(f"protloc: warning: the data's pixel size is unknown, so inputs are not rescaled to the model's "
          f"{model_um:g} µm/px; give --pixel-size UM (µm per pixel) if it differs", file=sys.stderr)
