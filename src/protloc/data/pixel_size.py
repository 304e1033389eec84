"""Pixel size (µm per pixel) of the data and of a model, and rescaling one to the other.

A network learns structures at the scale it was trained at: the published GapNet-PL weights saw HPA
confocal fields at their full resolution (the paper, section 2: "samples were not resized but kept
at their original resolution"; the HPA Cell Atlas confocal fields are about 0.08 µm per pixel at
2048², ../shared/reference/field-2026.md). The same field downscaled by Kaggle to 512² (Kaggle 2018
layout) is 0.32 µm per pixel: fed as it is, every cell looks four times smaller than anything the
network has seen. So each input is rescaled to the model's pixel size before the network sees it.

Where a sample's pixel size comes from, in order: ``--pixel-size`` (the user's word); the file's own
metadata (TIFF XResolution/YResolution with ResolutionUnit, OME-XML PhysicalSizeX); the layout
(Kaggle 2018 PNGs: ``KAGGLE2018_PIXEL_SIZE_UM``; HPA's 2048² web-download JPEGs: 0.08). Otherwise
it is unknown: nothing is rescaled and the caller warns once, saying how to give it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

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


def check_pixel_size(value, what: str = "--pixel-size") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ProtlocError(f"{what} must be a number of µm per pixel, got {value!r}") from None
    if not np.isfinite(number) or not 0.001 <= number <= 1000:
        raise ProtlocError(f"{what} must be between 0.001 and 1000 µm per pixel, got {value}")
    return number


def tiff_pixel_size(path: str | Path) -> float | None:
    """µm per pixel stated by a TIFF file (OME-XML PhysicalSizeX, else XResolution + ResolutionUnit)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.ome_metadata:
                match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
                if match and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m", "micron")):
                    return float(match.group(1))
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "ResolutionUnit" not in tags:
                return None
            numerator, denominator = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            if not numerator or not denominator:
                return None
            per_unit = numerator / denominator  # pixels per unit
            um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = no unit
            if um_per_unit is None or per_unit <= 0:
                return None
            value = um_per_unit / per_unit
            # 72 or 96 dpi are what image programs write when nobody measured anything.
            if unit == 2 and round(per_unit) in (72, 96, 300):
                return None
            return value
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


KAGGLE_COLOURS = ("blue", "red", "yellow", "green")


def _hpa_colour_files(files, suffix: str) -> bool:
    names = sorted(Path(f).name.lower() for f in files)
    return len(names) == 4 and sorted(colour for name in names for colour in KAGGLE_COLOURS
                                      if name.endswith(f"_{colour}{suffix}")) == sorted(KAGGLE_COLOURS)


def is_kaggle2018_layout(files, height: int, width: int) -> bool:
    """Four ``<id>_<colour>.png`` files (HPA colours) of 512x512: the Kaggle 2018 PNG layout."""
    return (height, width) == (KAGGLE2018_SIZE, KAGGLE2018_SIZE) and _hpa_colour_files(files, ".png")


def is_hpa_download_layout(files, height: int, width: int) -> bool:
    """Four ``<id>_<colour>.jpg`` files of 2048x2048: HPA's web-download format of a confocal field."""
    return (height, width) == (HPA_DOWNLOAD_SIZE, HPA_DOWNLOAD_SIZE) and _hpa_colour_files(files, ".jpg")


def pixel_size_of(files, height: int, width: int, override: float | None = None, names=None) -> PixelSize:
    """The pixel size of one sample: ``override``, else its TIFF metadata, else its layout; else unknown.

    ``files``: the sample's source files, or its sources dict as listed (OME-TIFF / OME-Zarr samples
    give their metadata's physical size); ``height``/``width``: its decoded size; ``names``: the
    files' original names where they are stored under others (the platform's content-addressed blobs).
    """
    if override is not None:
        return PixelSize(check_pixel_size(override), "--pixel-size")
    if isinstance(files, dict):
        from protloc.data.ome import is_ome_source, read_ome_header

        if is_ome_source(files):
            header = read_ome_header(files)
            if header is not None and header[1] is not None:
                y_um, x_um = header[1]
                return PixelSize(float(x_um), "OME metadata" + ("" if abs(y_um - x_um) < 1e-9 else
                                                                 f" (x; y is {y_um:g})"))
            return UNKNOWN
        files = list(files.values())
    files = [Path(f) for f in files]
    for path in files:
        if path.suffix.lower() in (".tif", ".tiff"):
            value = tiff_pixel_size(path)
            if value is not None:
                return PixelSize(value, f"TIFF metadata of {path.name}")
    names = [Path(str(n)) for n in names] if names is not None else files
    if is_kaggle2018_layout(names, height, width):
        return PixelSize(KAGGLE2018_PIXEL_SIZE_UM, KAGGLE2018_SOURCE)
    if is_hpa_download_layout(names, height, width):
        return PixelSize(HPA_CONFOCAL_PIXEL_SIZE_UM, HPA_DOWNLOAD_SOURCE)
    return UNKNOWN


def sample_pixel_size(index, entry) -> PixelSize:
    """The pixel size a data-set sample's files state or its layout implies; ``UNKNOWN`` otherwise."""
    entry = index.entry(entry)
    files = [index.resolve(value) for value in entry.sources.values()]
    return pixel_size_of(files, entry.height, entry.width)


def data_pixel_size(index, override: float | None = None) -> PixelSize:
    """One pixel size for a data set: the override, else the first sample's (stated or implied)."""
    if override is not None:
        return PixelSize(check_pixel_size(override), "--pixel-size")
    if not index.samples:
        return UNKNOWN
    return sample_pixel_size(index, index.samples[0])


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
