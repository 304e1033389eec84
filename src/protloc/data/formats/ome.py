"""What OME-TIFF and OME-Zarr (NGFF) inputs share: named channels, physical pixel size, Z/T policy.

An OME image names its channels ("DAPI", "anti-Tubulin", "Calreticulin", "GFP") instead of keeping
them in a fixed order. ``match_channels`` finds protloc's four channels (nucleus, microtubules, ER,
protein) among those names; a user mapping (``--channels``) settles names it cannot read. Z-stacks and
time series are refused unless a projection is asked for: protloc never flattens a stack silently.

The channel names resolve through the one alias table (``protloc.data.channels``); lengths and pixel
sizes through ``protloc.data.formats.physical``. The formats themselves are ``ome_tiff`` and ``ome_zarr``.
"""

from __future__ import annotations


import numpy as np

from protloc.data.channels import CHANNELS, canonical_channel, channel_of_name
from protloc.errors import DataError, ProtlocError

PROJECTIONS: tuple[str, ...] = ("max", "mean")
# A Z-stack or time series is read whole before it is projected: at most this many planes at the limit.
MAX_STACK_PLANES = 64

# Option keys carried in a sample's ``sources`` next to its file (sources are str -> str).
OPTION_CHANNELS = "channels"
OPTION_PROJECTION = "projection"
OPTION_ALLOW_SPARSE = "allow-sparse"  # OME-Zarr: chunks the store never wrote read as its fill value

def parse_channel_mapping(text: str | None) -> dict[str, str] | list[str] | None:
    """``--channels``: ``NAME=channel,...`` (NAME a channel name of the file or its 0-based index) or a
    positional list ``channel,channel,...`` (the file's channels in order; ``-`` skips one)."""
    if not text or not text.strip():
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]

    def canonical(word: str) -> str:
        channel = canonical_channel(word)
        if channel is None:
            raise ProtlocError(
                f"--channels: unknown channel {word!r}; use nucleus, microtubules, er, protein (or - to skip)"
            )
        return channel

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


def reader_options(channels: str | None = None, projection: str | None = None,
                   allow_sparse: bool = False) -> dict[str, str]:
    """The ``--channels`` / ``--projection`` / ``--allow-sparse-zarr`` choices as entries of a sample's
    sources (checked here)."""
    options = {}
    if allow_sparse:
        options[OPTION_ALLOW_SPARSE] = "yes"
    if channels:
        parse_channel_mapping(channels)
        options[OPTION_CHANNELS] = channels
    if check_projection(projection):
        options[OPTION_PROJECTION] = projection
    return options


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
