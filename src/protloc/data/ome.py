"""What OME-TIFF and OME-Zarr (NGFF) inputs share: named channels, physical pixel size, Z/T policy.

An OME image names its channels ("DAPI", "anti-Tubulin", "Calreticulin", "GFP") instead of keeping
them in a fixed order. ``match_channels`` finds protloc's four channels (nucleus, microtubules, ER,
protein) among those names; a user mapping (``--channels``) settles names it cannot read. Z-stacks and
time series are refused unless a projection is asked for: protloc never flattens a stack silently.

``ome_inputs`` is the one entry point of the input listing: it recognises an OME-TIFF file, a folder of
them, or an OME-Zarr store (one image, a well or an HCS plate) and lists its samples as
``(id, sources)``; ``read_ome_source`` reads one of those samples into an ``OmeImage``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS
from protloc.errors import DataError, ProtlocError

PROJECTIONS: tuple[str, ...] = ("max", "mean")
# A Z-stack or time series is read whole before it is projected: at most this many planes at the limit.
MAX_STACK_PLANES = 64

# Names a channel goes by in microscopy metadata: stains, dyes, targets. One-word entries match a
# whole word of the name ("anti-Tubulin (Alexa 594)"), several-word entries a phrase in it.
CHANNEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "nucleus": ("nucleus", "nuclei", "nuclear", "dapi", "hoechst", "dna", "draq5", "sytox"),
    "microtubules": ("microtubules", "microtubule", "tubulin", "tuba", "tubb"),
    "er": ("er", "endoplasmic reticulum", "endoplasmic", "reticulum", "calreticulin", "calnexin", "kdel"),
    "protein": ("protein", "antibody", "gfp", "egfp", "poi", "protein of interest", "target"),
}
# HPA's colours count only when they are the whole name (a channel named "green" in an HPA export).
COLOUR_NAMES: dict[str, str] = {"blue": "nucleus", "red": "microtubules", "yellow": "er", "green": "protein"}
# Accepted spellings of protloc's channels on the command line.
CANONICAL_ALIASES: dict[str, str] = {
    "nucleus": "nucleus", "microtubules": "microtubules", "er": "er", "protein": "protein",
    "nuclei": "nucleus", "dna": "nucleus", "tubulin": "microtubules", "endoplasmic-reticulum": "er",
}
# Option keys carried in a sample's ``sources`` next to its file (sources are str -> str).
OPTION_CHANNELS = "channels"
OPTION_PROJECTION = "projection"

_LENGTH_IN_UM: dict[str, float] = {
    "µm": 1.0, "um": 1.0, "μm": 1.0, "micrometer": 1.0, "micron": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "picometer": 1e-6, "å": 1e-4, "angstrom": 1e-4,
    "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
}


@dataclass(frozen=True)
class OmeImage:
    """One sample read from an OME file, converted once to protloc's canonical form.

    ``image``: float32 [4, H, W] in CHANNELS order (raw intensities). ``pixel_size_um``: the physical
    pixel size (y, x) in micrometres from the metadata, None where the file does not state it.
    ``source_channels``: the file's channel names that became nucleus, microtubules, ER, protein.
    """

    image: np.ndarray
    pixel_size_um: tuple[float, float] | None
    source_channels: tuple[str, ...]


def length_in_um(value: float, unit: str | None, where: str) -> float:
    """A physical length in micrometres; OME's default unit is the micrometre."""
    factor = _LENGTH_IN_UM.get((unit or "µm").strip().lower())
    if factor is None:
        raise DataError(f"{where}: pixel size in an unknown unit {unit!r}")
    return float(value) * factor


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]


def channel_of_name(name: str) -> set[str]:
    """protloc channels a metadata channel name points to (empty: unknown, several: ambiguous)."""
    words = _words(name)
    joined = " ".join(words)
    if joined in COLOUR_NAMES:
        return {COLOUR_NAMES[joined]}
    found = set()
    for channel, synonyms in CHANNEL_SYNONYMS.items():
        for synonym in synonyms:
            if (" " in synonym and f" {synonym} " in f" {joined} ") or synonym in words:
                found.add(channel)
    return found


def parse_channel_mapping(text: str | None) -> dict[str, str] | list[str] | None:
    """``--channels``: ``NAME=channel,...`` (NAME a channel name of the file or its 0-based index) or a
    positional list ``channel,channel,...`` (the file's channels in order; ``-`` skips one)."""
    if not text or not text.strip():
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]

    def canonical(word: str) -> str:
        key = word.strip().lower()
        if key not in CANONICAL_ALIASES:
            raise ProtlocError(
                f"--channels: unknown channel {word!r}; use nucleus, microtubules, er, protein (or - to skip)"
            )
        return CANONICAL_ALIASES[key]

    if all("=" in item for item in items):
        mapping = {}
        for item in items:
            name, _, target = item.partition("=")
            if not name.strip():
                raise ProtlocError(f"--channels: {item!r} names no channel of the file")
            mapping[name.strip()] = canonical(target)
        targets = list(mapping.values())
    elif not any("=" in item for item in items):
        mapping = [item if item == "-" else canonical(item) for item in items]
        targets = [t for t in mapping if t != "-"]
    else:
        raise ProtlocError("--channels: use either NAME=channel pairs or a positional list, not both")
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise ProtlocError(f"--channels: {duplicates[0]} is given more than once")
    return mapping


def check_projection(projection: str | None) -> str | None:
    if projection in (None, ""):
        return None
    if projection not in PROJECTIONS:
        raise ProtlocError(f"unknown projection {projection!r}: use {' or '.join(PROJECTIONS)}")
    return projection


def match_channels(names: list[str], mapping_text: str | None, where: str) -> list[int]:
    """For each of protloc's channels (CHANNELS order) the index of the file's channel that holds it.

    DataError when a channel is missing, a name is ambiguous, or the file has fewer than four channels.
    """
    shown = ", ".join(repr(n) for n in names)
    if len(names) < len(CHANNELS):
        raise DataError(
            f"{where} holds {len(names)} channel(s) ({shown}); protloc needs 4: nucleus, microtubules, ER, protein"
        )
    mapping = parse_channel_mapping(mapping_text)
    if isinstance(mapping, list):
        if len(mapping) != len(names):
            raise DataError(f"--channels lists {len(mapping)} channel(s) but {where} holds {len(names)} ({shown})")
        found = {target: i for i, target in enumerate(mapping) if target != "-"}
    elif isinstance(mapping, dict):
        lowered = [n.lower() for n in names]
        found = {}
        for key, target in mapping.items():
            if key.lower() in lowered:
                found[target] = lowered.index(key.lower())
            elif key.isdigit() and int(key) < len(names):
                found[target] = int(key)
            else:
                raise DataError(f"--channels names {key!r}, which {where} does not have (it has {shown})")
    else:
        found = {}
    # Channels the mapping leaves open are matched by name among the file's remaining channels.
    taken = set(found.values())
    for channel in CHANNELS:
        if channel in found:
            continue
        candidates = [i for i, n in enumerate(names) if i not in taken and channel in channel_of_name(n)]
        ambiguous = [i for i in candidates if len(channel_of_name(names[i])) > 1]
        if len(candidates) == 1 and not ambiguous:
            found[channel] = candidates[0]
            taken.add(candidates[0])
        elif candidates:
            raise DataError(
                f"{where}: cannot tell which channel is the {channel} among {shown}; "
                f"say it with --channels, e.g. --channels {_example_mapping(names)}"
            )
    missing = [c for c in CHANNELS if c not in found]
    if missing:
        raise DataError(
            f"{where}: no {', '.join(missing)} channel among {shown}; "
            f"name them with --channels, e.g. --channels {_example_mapping(names)}"
        )
    return [found[channel] for channel in CHANNELS]


def _example_mapping(names: list[str]) -> str:
    """A --channels value in the file's channel order (the user corrects what is wrong)."""
    text = ",".join(f"{name}={channel}" for name, channel in zip(names, CHANNELS))
    return f'"{text}"' if " " in text else text


def flatten_extra_axes(array: np.ndarray, axes: str, projection: str | None, where: str) -> tuple[np.ndarray, str]:
    """Project Z and T away (``projection`` max or mean), refusing stacks when none is given.

    ``axes`` names the array's dimensions (letters from TCZYX); axes of length 1 are dropped.
    """
    projection = check_projection(projection)
    for axis in "TZ":
        if axis not in axes:
            continue
        k = axes.index(axis)
        size = array.shape[k]
        if size > 1 and projection is None:
            what = "a Z-stack" if axis == "Z" else "a time series"
            raise DataError(
                f"{where} is {what} of {size} planes: protloc reads 2-D fields; add --projection max "
                f"(or mean) to project it"
            )
        if size > 1:
            array = array.max(axis=k) if projection == "max" else array.mean(axis=k, dtype=np.float64)
        else:
            array = np.take(array, 0, axis=k)
        axes = axes[:k] + axes[k + 1:]
    return array, axes


def to_canonical(array: np.ndarray, axes: str, order: list[int], where: str) -> np.ndarray:
    """A [C, Y, X] (any order of those letters) array and the channel indices -> float32 [4, H, W]."""
    if sorted(axes) != sorted("CYX"):
        raise DataError(f"{where}: unexpected axes {axes!r} after projection (expected C, Y and X)")
    array = np.transpose(array, [axes.index(a) for a in "CYX"])
    out = np.empty((len(order),) + array.shape[1:], dtype=np.float32)
    for i, source in enumerate(order):
        out[i] = array[source]
    if out.shape[1] == 0 or out.shape[2] == 0:
        raise DataError(f"{where}: empty image of shape {list(out.shape)}")
    if not np.isfinite(out).all():
        raise DataError(f"{where}: contains NaN or infinite values")
    return out


def reader_options(channels: str | None = None, projection: str | None = None) -> dict[str, str]:
    """The ``--channels`` / ``--projection`` choices as entries of a sample's sources (checked here)."""
    options = {}
    if channels:
        parse_channel_mapping(channels)
        options[OPTION_CHANNELS] = channels
    if check_projection(projection):
        options[OPTION_PROJECTION] = projection
    return options


def ome_inputs(path: str | Path, options: dict[str, str] | None = None) -> list[tuple[str, dict[str, str]]] | None:
    """The samples of an OME input as ``(id, sources)``, or None when ``path`` is not an OME input.

    Recognised: an OME-TIFF file, a folder whose images are all OME-TIFFs, and a Zarr store (an NGFF
    image, a well or an HCS plate; a Zarr store without NGFF metadata is a ProtlocError). A single
    OME-TIFF's channels are checked here, so a file protloc cannot use stops the run with its reason.
    """
    from protloc.data import ome_tiff, ome_zarr

    path = Path(path)
    options = dict(options or {})
    if path.is_dir() and ome_zarr.is_zarr_group(path):
        return ome_zarr.list_samples(path, options)
    if path.is_file() and ome_tiff.is_ome_tiff(path):
        sources = {ome_tiff.SOURCE_KEY: str(path), **options}
        try:
            ome_tiff.inspect(path, sources)
        except DataError as exc:
            raise ProtlocError(str(exc)) from None
        return [(ome_tiff.sample_id(path), sources)]
    if path.is_dir():
        from protloc.data.filenames import is_label_image_name

        files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
        # The OME-TIFFs' own label images (``<id>_cellmask.ome.tif``) lie beside them: not samples.
        images = [p for p in files if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npz")
                  and not is_label_image_name(p.name)]
        if images and all(ome_tiff.is_ome_tiff(p) for p in images):
            return [(ome_tiff.sample_id(p), {ome_tiff.SOURCE_KEY: str(p), **options}) for p in images]
    return None


def is_ome_source(sources: dict) -> bool:
    from protloc.data import ome_tiff, ome_zarr

    return ome_tiff.SOURCE_KEY in sources or ome_zarr.SOURCE_KEY in sources


def check_size(shape: tuple[int, ...], axes: str, where: str, max_pixels: int | None = None) -> None:
    """The pixel limit (``protloc.data.limits``) on an OME image before its pixels are read: one Y x X
    plane at most the limit, and the whole stack (channels, Z, T) at most MAX_STACK_PLANES planes."""
    from protloc.data.limits import RAISE_HINT, ImageTooLargeError, check_pixels
    from protloc.data.limits import max_pixels as limit_in_force

    limit = limit_in_force() if max_pixels is None else int(max_pixels)
    sizes = dict(zip(axes, shape))
    check_pixels((sizes.get("Y", 1), sizes.get("X", 1)), where, limit)
    total = int(np.prod([int(d) for d in shape]))
    if total > MAX_STACK_PLANES * limit:
        raise ImageTooLargeError(f"{where}: holds {total} values ({axes} {'x'.join(map(str, shape))}), more than "
                                 f"{MAX_STACK_PLANES} planes at the limit of {limit} pixels ({RAISE_HINT})")


def read_ome_source(sources: dict[str, str], max_pixels: int | None = None) -> OmeImage:
    """Read one sample listed by ``ome_inputs`` (refused from its metadata when over the pixel limit)."""
    from protloc.data import ome_tiff, ome_zarr

    if ome_tiff.SOURCE_KEY in sources:
        return ome_tiff.read(sources, max_pixels)
    if ome_zarr.SOURCE_KEY in sources:
        return ome_zarr.read(sources, max_pixels)
    raise ProtlocError("not an OME-TIFF or OME-Zarr sample")


def describe_inputs(paths, options: dict[str, str] | None = None, limit: int = 5) -> list[str]:
    """One line per OME input saying which of its channels became which and its pixel size, so that
    nothing is assumed silently (e.g. ``cells.ome.tif: DAPI -> nucleus, ...; pixel size 0.08 µm``).
    A plate is described by its first field (its fields share their channels)."""
    lines = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            continue
        listed = ome_inputs(path.absolute(), options)
        if not listed:
            continue
        for sample_id, sources in listed[:1] if len(listed) > 1 else listed:
            sample = read_ome_header(sources)
            if sample is None:
                continue
            names, pixel_size = sample
            mapping = ", ".join(f"{name} -> {channel}" for name, channel in zip(names, CHANNELS))
            size = f"pixel size {pixel_size[1]:.4g} µm" if pixel_size else "pixel size not stated in the file"
            if pixel_size and abs(pixel_size[0] - pixel_size[1]) > 1e-9:
                size = f"pixel size {pixel_size[0]:.4g} x {pixel_size[1]:.4g} µm (y x)"
            more = f" (and {len(listed) - 1} more samples like it)" if len(listed) > 1 else ""
            lines.append(f"{sample_id}{more}: {mapping}; {size}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more OME inputs"]
    return lines


def read_ome_header(sources: dict[str, str]) -> tuple[tuple[str, ...], tuple[float, float] | None] | None:
    """The file's channel names in CHANNELS order and its pixel size, from metadata only."""
    from protloc.data import ome_tiff, ome_zarr

    try:
        if ome_tiff.SOURCE_KEY in sources:
            header, order = ome_tiff.inspect(sources[ome_tiff.SOURCE_KEY], sources)
            return tuple(header.channel_names[i] for i in order), header.pixel_size_um
        if ome_zarr.SOURCE_KEY in sources:
            return ome_zarr.header_of(sources)
    except DataError:
        return None
    return None
