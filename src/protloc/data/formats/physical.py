"""Physical sizes read from files: lengths in their unit, pixel sizes checked where they enter.

Every format states its pixel size its own way (OME-XML ``PhysicalSizeX`` + unit, NGFF ``scale`` + axis
unit, TIFF ``XResolution`` + ``ResolutionUnit``); each is converted here, once, to µm per pixel and
checked against the bounds ``--pixel-size`` has (``protloc.data.pixel_size.PIXEL_SIZE_BOUNDS_UM``). A
value outside them (NaN, negative, 1e-9 px/cm) is not a pixel size anyone measured: the sample is
refused with one line naming the file and the tag, never rescaled by it. ``--pixel-size`` overrides
what the files say, so a user with such files can still use them.

Images too small for the network to answer (``MIN_IMAGE_SIDE``) are refused here as well.
"""

from __future__ import annotations

import math

from protloc.data.pixel_size import PIXEL_SIZE_BOUNDS_UM, UNKNOWN, PixelSize
from protloc.errors import DataError

# GapNet-PL's deepest block sees the image at 1/16 (conv stride 2, pool 2, conv stride 2, pool 2): an
# image narrower than 16 pixels leaves it less than one position of real data, and any answer is the
# answer for the zero padding around it (issue 23: 1x1 and 3x3 images were predicted).
MIN_IMAGE_SIDE = 16

_LENGTH_IN_UM: dict[str, float] = {
    "µm": 1.0, "um": 1.0, "μm": 1.0, "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "pm": 1e-6, "picometer": 1e-6, "å": 1e-4,
    "angstrom": 1e-4, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
}
# TIFF ResolutionUnit: 2 inch, 3 centimetre (1: no unit, the numbers are an aspect ratio only).
_TIFF_UNIT_IN_UM: dict[int, float] = {2: 25400.0, 3: 10000.0}
# What image programs write when nobody measured anything (dots per inch for printing).
_PRINTER_DPI = (72, 96, 300)


def length_in_um(value, unit: str | None, where: str, tag: str) -> float:
    """A physical length in micrometres (OME's and NGFF's default unit is the micrometre)."""
    factor = _LENGTH_IN_UM.get((unit or "µm").strip().lower())
    if factor is None:
        raise DataError(f"{where}: {tag} is in an unknown unit {unit!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {tag}={value!r} is not a number") from None
    return number * factor


def checked_pixel_size(um: float, where: str, tag: str) -> float:
    """``um`` when it is a pixel size (finite, within ``PIXEL_SIZE_BOUNDS_UM``); else DataError naming
    the file and the tag."""
    low, high = PIXEL_SIZE_BOUNDS_UM
    if not math.isfinite(um) or not low <= um <= high:
        raise DataError(f"{where}: {tag} gives {um:g} µm per pixel, not a pixel size (must be between {low:g} and "
                        f"{high:g}); give --pixel-size UM to use the file anyway")
    return um


def physical_pixel_size(y: tuple, x: tuple, where: str, tag: str) -> PixelSize:
    """A PixelSize from (value, unit) of the y and x axes; the x size is used, y is mentioned when it differs."""
    x_um = checked_pixel_size(length_in_um(*x, where, f"{tag}X"), where, f"{tag}X")
    y_um = checked_pixel_size(length_in_um(*y, where, f"{tag}Y"), where, f"{tag}Y")
    note = "" if abs(y_um - x_um) < 1e-9 * max(x_um, 1e-12) else f" (x; y is {y_um:g})"
    return PixelSize(x_um, f"{tag.split()[0]} metadata{note}")


def tiff_resolution_pixel_size(page, where: str) -> PixelSize:
    """µm per pixel from a TIFF page's XResolution + ResolutionUnit; UNKNOWN where they say nothing
    (no tags, no unit, a printer's 72/96/300 dpi); DataError where they give an absurd size."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return UNKNOWN
    try:
        numerator, denominator = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: TIFF XResolution/ResolutionUnit tags are malformed") from None
    um_per_unit = _TIFF_UNIT_IN_UM.get(unit)
    if um_per_unit is None or numerator == 0:
        return UNKNOWN  # no physical unit, or the zero resolution programs write for "not set"
    per_unit = numerator / denominator if denominator else math.inf
    if unit == 2 and per_unit > 0 and round(per_unit) in _PRINTER_DPI:
        return UNKNOWN
    um = um_per_unit / per_unit if per_unit > 0 else math.nan
    tag = f"TIFF XResolution {numerator}/{denominator} px per {'inch' if unit == 2 else 'cm'}"
    return PixelSize(checked_pixel_size(um, where, tag), f"TIFF metadata of {where}")


def check_image_size(height: int, width: int, where: str) -> None:
    """DataError for an image too small for the network to answer."""
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DataError(f"{where}: image of {height}x{width} pixels is too small to predict (at least "
                        f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}: the network's deepest features see 16x16 pixels)")
