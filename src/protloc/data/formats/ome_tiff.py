"""OME-TIFF input: a multi-channel image whose OME-XML names its channels and pixel size.

tifffile reads the pixels (the full-resolution level of a pyramid) and hands over the OME-XML; the
channels are matched by name (``protloc.data.formats.ome.match_channels``), the physical pixel size comes from
``Pixels/@PhysicalSizeY|X`` in its unit. One image per file; Z-stacks and time series need
``--projection``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.data.formats.base import Sample
from protloc.data.formats.ome import (
    OPTION_CHANNELS,
    OPTION_PROJECTION,
    check_size,
    flatten_extra_axes,
    match_channels,
    to_canonical,
)
from protloc.data.formats.physical import physical_pixel_size
from protloc.data.pixel_size import UNKNOWN, PixelSize
from protloc.errors import DataError, ProtlocError

KEY = "ome-tiff"
SUFFIXES: tuple[str, ...] = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")


@dataclass(frozen=True)
class OmeTiffHeader:
    channel_names: list[str]
    physical: tuple[tuple, tuple] | None  # ((PhysicalSizeY, unit), (PhysicalSizeX, unit)) as written
    sizes: dict[str, int]  # SizeT, SizeZ, SizeC as T, Z, C
    images: int


def is_ome_tiff(path: str | Path) -> bool:
    """A ``.ome.tif(f)`` name, or a TIFF whose first page carries OME-XML."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(SUFFIXES):
        return True
    if not name.endswith((".tif", ".tiff")):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # not a TIFF at all: the ordinary readers report it
        return False


def sample_id(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES + (".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_ome_xml(xml: str, where: str) -> OmeTiffHeader:
    """Channel names, pixel size and dimension sizes of the first image of an OME-XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DataError(f"{where}: damaged OME-XML ({exc})") from None
    images = [el for el in root if _local(el.tag) == "Image"]
    pixels = next((el for el in images[0] if _local(el.tag) == "Pixels"), None) if images else None
    if pixels is None:
        raise DataError(f"{where}: OME-XML without an Image/Pixels element")
    names = []
    for i, channel in enumerate(el for el in pixels if _local(el.tag) == "Channel"):
        names.append(channel.get("Name") or channel.get("Fluor") or f"channel {i}")
    sizes = {axis: _number(pixels, f"Size{axis}", int, where, "1") for axis in "TZC"}
    # A channel element may stand for several samples (RGB); then names cannot be matched one to one.
    if len(names) != sizes["C"]:
        names = [f"channel {i}" for i in range(sizes["C"])]
    physical = None
    if pixels.get("PhysicalSizeX") and pixels.get("PhysicalSizeY"):
        physical = ((_number(pixels, "PhysicalSizeY", float, where), pixels.get("PhysicalSizeYUnit")),
                    (_number(pixels, "PhysicalSizeX", float, where), pixels.get("PhysicalSizeXUnit")))
    return OmeTiffHeader(names, physical, sizes, len(images))


def pixel_size(header: OmeTiffHeader, where: str) -> PixelSize:
    """The header's PhysicalSizeY/X in µm, checked (DataError naming the file and the attribute)."""
    if header.physical is None:
        return UNKNOWN
    return physical_pixel_size(*header.physical, where, "OME PhysicalSize")


def _number(pixels, attribute: str, kind, where: str, default: str | None = None):
    """An attribute of OME-XML's Pixels element as a number; the user's XML may hold anything there."""
    text = pixels.get(attribute, default)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: OME-XML Pixels {attribute}={text!r} is not a number") from None


def _open_error(path: Path, exc: Exception) -> DataError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"unreadable OME-TIFF {path.name}: {reason}")


def inspect(path: str | Path, sources: dict[str, str] | None = None) -> tuple[OmeTiffHeader, list[int]]:
    """Read only the metadata and check it: the header and the channel order it gives; DataError if unusable."""
    import tifffile

    path = Path(path)
    sources = sources or {}
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except Exception as exc:
        raise _open_error(path, exc) from None
    if not xml:
        raise DataError(f"{path.name} carries no OME-XML: not an OME-TIFF")
    header = parse_ome_xml(xml, path.name)
    if header.images > 1:
        raise DataError(f"{path.name} holds {header.images} images; protloc reads one image per OME-TIFF")
    order = match_channels(header.channel_names, sources.get(OPTION_CHANNELS), path.name)
    if sources.get(OPTION_PROJECTION) is None:
        for axis, what in (("Z", "a Z-stack"), ("T", "a time series")):
            if header.sizes[axis] > 1:
                raise DataError(
                    f"{path.name} is {what} of {header.sizes[axis]} planes: protloc reads 2-D fields; "
                    "add --projection max (or mean) to project it"
                )
    return header, order


def list_samples(path: Path, options: dict[str, str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """The one sample of an OME-TIFF file, its channels checked now: a file protloc cannot use named on
    the command line stops the run with its reason."""
    sources = {KEY: str(path), **(options or {})}
    try:
        inspect(path, sources)
    except DataError as exc:
        raise ProtlocError(str(exc)) from None
    return [(sample_id(path), sources)]


def header_of(sources: dict[str, str]) -> tuple[tuple[str, ...], PixelSize]:
    """Channel names in CHANNELS order and the pixel size, from metadata only (DataError if unusable)."""
    path = Path(sources[KEY])
    header, order = inspect(path, sources)
    return tuple(header.channel_names[i] for i in order), pixel_size(header, path.name)


def read(sources: dict[str, str], max_pixels: int | None = None, given: PixelSize | None = None) -> Sample:
    """The sample of an OME-TIFF (full resolution; channels matched by name; its stated pixel size)."""
    import tifffile

    path = Path(sources[KEY])
    header, order = inspect(path, sources)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            check_size(series.shape, axes.replace("S", "C") if "C" not in axes else axes, path.name, max_pixels)
            array = series.asarray(level=0)  # level 0 of a pyramid is the full resolution
    except DataError:
        raise
    except Exception as exc:
        raise _open_error(path, exc) from None
    array = np.asarray(array)
    if "S" in axes and "C" not in axes:  # channels stored as samples of one pixel
        axes = axes.replace("S", "C")
    if "C" not in axes:
        raise DataError(f"{path.name} holds a single channel; protloc needs 4: nucleus, microtubules, ER, protein")
    unknown = set(axes) - set("TZCYX")
    if unknown:
        raise DataError(f"{path.name}: unsupported image axes {axes!r}")
    array, axes = flatten_extra_axes(array, axes, sources.get(OPTION_PROJECTION), path.name)
    if array.shape[axes.index("C")] != len(header.channel_names):
        raise DataError(
            f"{path.name}: the OME-XML names {len(header.channel_names)} channels but the pixels hold "
            f"{array.shape[axes.index('C')]}"
        )
    image = to_canonical(array, axes, order, path.name)
    return Sample(image, given or pixel_size(header, path.name), tuple(header.channel_names[i] for i in order))


def read_by_names(path: str | Path) -> bool:
    """Whether a TIFF inside a data folder is read as an OME-TIFF: named so, or naming its channels."""
    return Path(path).name.lower().endswith(SUFFIXES) or names_its_channels(path)


def names_its_channels(path: str | Path) -> bool:
    """A TIFF handed over as "a 4-plane TIFF in canonical order" (an upload, a multichannel file) that
    turns out to be an OME-TIFF naming its channels is read by those names; any other TIFF (no
    OME-XML, or channels without names) keeps the canonical-order rule."""
    path = Path(path)
    if not is_ome_tiff(path):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            header = parse_ome_xml(tif.ome_metadata or "", path.name)
    except DataError:
        return False
    except Exception as exc:
        raise _open_error(path, exc) from None
    return not all(name == f"channel {i}" for i, name in enumerate(header.channel_names))
