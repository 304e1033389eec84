"""napari reader: HPA channel sets and the authors' NPZ as one image layer per channel.

What it opens is what ``protloc predict`` opens (``protloc.data.formats.discover`` finds the
sample, ``read`` decodes it into the canonical float32 [4, H, W]): a channel file
``<id>_<blue|red|yellow|green>.<ext>`` or ``<id>_<nucleus|microtubules|er|protein>.<ext>`` (its three
siblings are found beside it), the four channel
files selected together, a folder holding one sample's channel files, the authors' ``.npz`` with
``sample``, or a 4-plane TIFF. Each channel becomes an image layer in HPA's colour (blue nucleus, red
microtubules, yellow ER, green protein), named ``<channel> · <sample id>``, blended additively, with
contrast limits from the data.

Every layer carries ``metadata["protloc"] = {"sample_id", "channel", "source"}``: the widget finds a
sample's four layers by it, whatever the user renamed them to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.filenames import TIFF_EXTENSIONS, channel_file_id
from protloc.data.formats import discover, read
from protloc.errors import ProtlocError

METADATA_KEY = "protloc"
# The plugin's napari name, as in napari.yaml.
PLUGIN_NAME = "protloc"
# napari's built-in colormaps of these names are the pure colours HPA shows each channel in.
CHANNEL_COLORMAPS: dict[str, str] = dict(COLOUR_OF_CHANNEL)
# Percentiles of the contrast limits: the top 0.1 % of pixels (bright spots, hot pixels) saturate
# rather than darken everything else.
CONTRAST_PERCENTILES = (0.1, 99.9)

LayerDataTuple = tuple  # (data, kwargs, layer type), napari's convention


def contrast_limits(plane: np.ndarray) -> list[float]:
    """Display range of one channel from its data: [0.1th, 99.9th percentile], never empty."""
    step = max(1, int(np.sqrt(plane.size / 1_000_000)))  # about a million pixels decide it
    low, high = np.percentile(plane[::step, ::step], CONTRAST_PERCENTILES)
    if high <= low:
        low, high = float(plane.min()), float(plane.max())
    if high <= low:
        high = low + 1.0
    return [float(low), float(high)]


def channel_layers(image: np.ndarray, sample_id: str, source: str = "", extra: dict | None = None
                   ) -> list[LayerDataTuple]:
    """The layer data tuples of one canonical sample [4, H, W]: one image layer per channel."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise ProtlocError(f"expected a sample [4, height, width], got shape {list(image.shape)}")
    layers = []
    for channel, plane in zip(CHANNELS, image):
        metadata = {METADATA_KEY: {"sample_id": sample_id, "channel": channel, "source": source, **(extra or {})}}
        layers.append((
            plane,
            {
                "name": f"{channel} · {sample_id}",
                "colormap": CHANNEL_COLORMAPS[channel],
                "blending": "additive",
                "contrast_limits": contrast_limits(plane),
                "metadata": metadata,
            },
            "image",
        ))
    return layers


def _as_paths(path: str | Sequence[str]) -> list[str]:
    return [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]


def _is_four_plane_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tuple(d for d in tiff.series[0].shape if d != 1)
    except Exception:  # not a TIFF tifffile can parse: not ours to open
        return False
    return len(shape) == 3 and len(CHANNELS) in (shape[0], shape[-1])


def _npz_has_sample(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "sample" in npz.files
    except Exception:  # not an npz numpy can open: not ours to open
        return False


def _is_ours(paths: list[str]) -> bool:
    """Whether the paths are something this reader opens; cheap, never raises (napari probes with it).

    Colour-named channel files are claimed even when a sibling is missing, so the user reads which
    channel is missing rather than napari's "no reader"; a folder of unrelated images is not claimed.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir() or channel_file_id(path) is not None:
            continue
        suffix = path.suffix.lower()
        if suffix == ".npz" and _npz_has_sample(path):
            continue
        if suffix in TIFF_EXTENSIONS and _is_four_plane_tiff(path):
            continue
        return False
    try:
        entries = discover(paths)
    except (ProtlocError, OSError):
        return False
    channel_sets = [e for e in entries if set(e.sources) <= set(CHANNELS)]
    # discover lists every plain TIFF of a folder as a 4-channel candidate: one is a sample, many
    # are somebody else's image series.
    return len(channel_sets) == len(entries) or len(entries) == 1


def get_reader(path: str | Sequence[str]) -> Callable | None:
    """napari's reader hook: a function that reads ``path``, or None when it is not protloc's."""
    paths = _as_paths(path)
    if not paths or not _is_ours(paths):
        return None
    return read_samples


def read_samples(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Read the sample(s) at ``path`` as layer data tuples; ProtlocError (one line) for bad input."""
    entries = discover(_as_paths(path))
    if len(entries) > 1 and any(Path(p).is_dir() for p in _as_paths(path)):
        shown = ", ".join(e.id for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ProtlocError(
            f"{_as_paths(path)[0]} holds {len(entries)} samples ({shown}): open one sample's channel files"
        )
    layers: list[LayerDataTuple] = []
    for entry in entries:
        image = read(entry).image
        source = next(iter(entry.sources.values())) if len(entry.sources) == 1 else str(
            Path(next(iter(entry.sources.values()))).parent)
        layers.extend(channel_layers(image, entry.id, source))
    return layers
