"""Readers of the image files of HTI data sets.

Three on-disk formats reach the same canonical sample, a float32 array [4, H, W] in ``CHANNELS`` order
(nucleus, microtubules, ER, protein) holding raw intensities:

- ``channels``: one image file per channel (TIFF 8/16-bit, PNG, JPEG) named by HPA's colour of the
  channel, either ``<id>_<colour>.<ext>`` side by side in one folder or one folder per sample holding
  ``<colour>.<ext>`` / ``<anything>_<colour>.<ext>``.
- ``npz``: the authors' release, ``<key>.npz`` with ``sample`` (H x W x 4, uint8).
- ``kaggle-hpa``: the Kaggle "Human Protein Atlas Image Classification" layout, ``<Id>_<colour>.png|tif``.

Anything unusable raises ``DataError`` with a reason a person can act on; the scanner turns those into
the list of excluded samples.
"""

from __future__ import annotations

import logging
import re
import threading
import zipfile
from pathlib import Path

import numpy as np

from protloc.data.channels import AUTHORS_CHANNEL_ORDER, CHANNELS, COLOUR_OF_CHANNEL, HPA_COLOURS
from protloc.errors import DataError, ProtlocError

IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")

# Which RGB planes carry a colour-encoded channel file's signal. HPA serves its channel images as
# pseudo-coloured RGB: the blue file in the B plane, green in G, red in R, and yellow (= red + green)
# in both R and G. Yellow becomes the mean of R and G, which equals either plane where they agree and
# averages out their independent JPEG noise where they do not.
COLOUR_PLANES: dict[str, tuple[int, ...]] = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}

# The authors' ``sample`` arrays (H x W x 4) are in their network's input order (see channels.py).
NPZ_CHANNEL_ORDER: tuple[str, ...] = AUTHORS_CHANNEL_ORDER

_COLOUR_ALTERNATION = "|".join(HPA_COLOURS)
_EXT_ALTERNATION = "|".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
# "<id>_<colour>.<ext>", case-insensitive colour and extension; the id may itself contain underscores.
CHANNEL_FILE_RE = re.compile(rf"^(?P<id>.+)_(?P<colour>{_COLOUR_ALTERNATION})\.(?P<ext>{_EXT_ALTERNATION})$", re.I)
# Inside a per-sample folder the prefix is optional: "<colour>.<ext>" or "<anything>_<colour>.<ext>".
FOLDER_CHANNEL_FILE_RE = re.compile(
    rf"^(?:(?P<id>.+)_)?(?P<colour>{_COLOUR_ALTERNATION})\.(?P<ext>{_EXT_ALTERNATION})$", re.I
)


def colour_of_file(path: str | Path) -> str | None:
    """The HPA colour a channel file is named by (``blue`` for ``x_blue.png`` or ``Blue.TIF``), or None."""
    match = FOLDER_CHANNEL_FILE_RE.match(Path(path).name)
    return match.group("colour").lower() if match else None


# tifffile reports some damage (a strip cut short, a bad tag) through its logger and returns what it
# could read. Those records are collected per thread during a read and turned into a DataError, so a
# damaged file is never mistaken for a good one.
class _TiffLogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(self.local, "records", None)
        if records is not None:
            records.append(record.getMessage())


_TIFF_LOG = _TiffLogCapture()
logging.getLogger("tifffile").addHandler(_TIFF_LOG)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    _TIFF_LOG.local.records = []
    try:
        array = tifffile.imread(path)
        problems = _TIFF_LOG.local.records
    finally:
        _TIFF_LOG.local.records = None
    if problems:
        raise DataError(f"damaged TIFF {path.name}: {problems[0]}")
    return np.asarray(array)


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decodes fully: a truncated PNG/JPEG fails here, not later
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        array = np.asarray(image)
    if mode == "LA":  # grey + alpha
        array = array[..., 0]
    return array


def _to_plane(array: np.ndarray, colour: str | None, name: str) -> np.ndarray:
    """A decoded image as one 2-D plane: grayscale as is, colour-encoded RGB(A) by its signal planes."""
    if array.size == 0:
        raise DataError(f"{name}: empty image")
    array = np.squeeze(array)
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise DataError(f"{name}: expected a 2-D image, got an array of shape {array.shape}")
    # TIFFs may store colour planes first (planar configuration): [3|4, H, W].
    if array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (3, 4):
        raise DataError(
            f"{name}: holds {array.shape[-1]} planes of {array.shape[0]}x{array.shape[1]}; a channel file "
            "must be grayscale or RGB (use one file per channel, or a 4-plane multichannel file)"
        )
    rgb = array[..., :3]  # alpha carries no signal
    planes = COLOUR_PLANES.get(colour or "")
    if planes is not None:
        # A file coloured other than its name says (e.g. ER drawn in green) keeps its signal: fall back
        # to the maximum over planes when the expected planes hold much less than another plane (JPEG
        # leaks a little of the signal into every plane, so "empty" cannot mean exactly zero).
        # A 4x4-subsampled grid estimates the plane means well enough and costs 1/16 of the full pass.
        plane_means = np.array([rgb[::4, ::4, k].mean(dtype=np.float64) for k in range(3)])
        if plane_means[list(planes)].min() >= 0.5 * plane_means.max():
            if len(planes) == 1:
                return np.ascontiguousarray(rgb[..., planes[0]])
            total = rgb[..., planes[0]].astype(np.float32)
            for k in planes[1:]:
                total += rgb[..., k]
            return total / np.float32(len(planes))
    # Unknown colour: the signal sits in one or more planes, the others are (near) zero.
    return rgb.max(axis=-1)


def read_channel_file(path: str | Path, colour: str | None = None) -> np.ndarray:
    """Read one channel image as a 2-D array in its native dtype (uint8, uint16, ...).

    RGB(A) colour-encoded files become grayscale from the planes the channel's HPA colour is drawn in
    (``COLOUR_PLANES``; yellow = mean of R and G, returned as float32), or from the maximum over the
    planes when the colour is unknown. ``colour`` defaults to the one in the file name.
    DataError when the file is missing, truncated or not an image.
    """
    path = Path(path)
    if colour is None:
        colour = colour_of_file(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    suffix = path.suffix.lower()
    try:
        array = _read_tiff(path) if suffix in TIFF_EXTENSIONS else _read_pillow(path)
    except DataError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, ValueError, codec errors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"unreadable {path.name}: {reason}") from None
    plane = _to_plane(array, colour, path.name)
    if plane.size == 0:
        raise DataError(f"{path.name}: empty image")
    if plane.dtype.kind == "f" and not np.isfinite(plane).all():
        raise DataError(f"{path.name}: contains NaN or infinite values")
    return plane


def _canonical_from_hwc(array: np.ndarray, order: tuple[str, ...], name: str) -> np.ndarray:
    """[H, W, 4] or [4, H, W] with channels in ``order`` -> float32 [4, H, W] in CHANNELS order."""
    array = np.asarray(array)
    if array.ndim != 3 or 4 not in (array.shape[0], array.shape[-1]):
        raise DataError(f"{name}: expected 4 channels as HxWx4 or 4xHxW, got shape {array.shape}")
    if array.shape[-1] == 4:
        array = np.moveaxis(array, -1, 0)
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise DataError(f"{name}: empty image of shape {array.shape}")
    source = {channel: i for i, channel in enumerate(order)}
    out = np.stack([array[source[channel]] for channel in CHANNELS]).astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    return np.ascontiguousarray(out)


def read_npz_sample(path: str | Path) -> np.ndarray:
    """The authors' ``<key>.npz`` (``sample``: H x W x 4) as float32 [4, H, W] in CHANNELS order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "sample" not in npz.files:
                raise DataError(f"{path.name}: no 'sample' array (holds {', '.join(npz.files) or 'nothing'})")
            array = npz["sample"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"unreadable {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    return _canonical_from_hwc(array, NPZ_CHANNEL_ORDER, path.name)


def read_multichannel_file(path: str | Path) -> np.ndarray:
    """One file holding all four channels -> float32 [4, H, W] in CHANNELS order.

    Accepts an ``.npz`` with ``sample`` (H x W x 4, ``NPZ_CHANNEL_ORDER``) or a 4-plane TIFF stored as
    [4, H, W] or [H, W, 4] in the canonical order (nucleus, microtubules, ER, protein). Meant for
    single-file uploads and prediction inputs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz_sample(path)
    if suffix not in TIFF_EXTENSIONS:
        raise DataError(f"{path.name}: a multichannel file must be a 4-plane TIFF or an .npz with 'sample'")
    if not path.is_file():
        raise DataError(f"missing file {path.name}")
    try:
        array = _read_tiff(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable {path.name}: {str(exc).strip() or type(exc).__name__}") from None
    return _canonical_from_hwc(np.squeeze(array), CHANNELS, path.name)


def _read_planes(sources: dict[str, str]) -> list[np.ndarray]:
    """The four channel planes in CHANNELS order, native dtype, checked for presence and equal shapes."""
    missing = [c for c in CHANNELS if c not in sources]
    if missing:
        raise DataError("missing channel " + ", ".join(f"{COLOUR_OF_CHANNEL[c]} ({c})" for c in missing))
    planes = [read_channel_file(sources[c], colour=COLOUR_OF_CHANNEL[c]) for c in CHANNELS]
    shapes = {channel: plane.shape for channel, plane in zip(CHANNELS, planes)}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{COLOUR_OF_CHANNEL[c]} {s[0]}x{s[1]}" for c, s in shapes.items())
        raise DataError(f"channels of different shapes: {described}")
    return planes


def read_sample(sources: dict[str, str], format: str | None = None) -> np.ndarray:
    """Read one sample from its sources into float32 [4, H, W] (CHANNELS order).

    ``sources`` maps each channel name to its file (``channels`` and ``kaggle-hpa`` formats), or is
    ``{'npz': path}`` / ``{'multichannel': path}``. DataError names the first problem: a missing
    channel, an unreadable file, or channels of different shapes. ``format`` is informational: the
    sources' keys say how to read them.
    """
    if "npz" in sources:
        return read_npz_sample(sources["npz"])
    # --- hook (issue 14): OME-TIFF / OME-Zarr samples listed by protloc.data.ome.ome_inputs ---
    from protloc.data.ome import is_ome_source, read_ome_source
    if is_ome_source(sources):
        return read_ome_source(sources).image
    # --- end hook ---
    if "multichannel" in sources:
        return read_multichannel_file(sources["multichannel"])
    planes = _read_planes(sources)
    out = np.empty((len(CHANNELS),) + planes[0].shape, dtype=np.float32)
    for i, plane in enumerate(planes):
        out[i] = plane
    return out


def check_sample(sources: dict[str, str]) -> tuple[int, int]:
    """Decode every file of a sample fully and return its (height, width); DataError like read_sample.

    Cheaper than read_sample for channel files: the planes are not converted to one float32 array.
    """
    if "npz" in sources or "multichannel" in sources:
        image = read_sample(sources)
        return int(image.shape[1]), int(image.shape[2])
    planes = _read_planes(sources)
    return int(planes[0].shape[0]), int(planes[0].shape[1])


def channel_file_id(path: str | Path) -> tuple[str, str] | None:
    """(sample id, channel name) of a ``<id>_<colour>.<ext>`` file, or None for any other name."""
    match = CHANNEL_FILE_RE.match(Path(path).name)
    if not match:
        return None
    return match.group("id"), HPA_COLOURS[match.group("colour").lower()]


def _is_multichannel_candidate(path: Path) -> bool:
    return path.suffix.lower() == ".npz" or (
        path.suffix.lower() in TIFF_EXTENSIONS and channel_file_id(path) is None
    )


def load_entry(entry) -> np.ndarray:
    """Decode a SampleEntry whose sources are absolute paths (as ``discover_inputs`` gives them)."""
    return read_sample(entry.sources)


def discover_inputs(paths, format: str | None = None, label_set=None, reader_options: dict | None = None) -> list:
    """Collect prediction inputs as a list of SampleEntry with absolute source paths; nothing is decoded.

    Each path may be a channel file (``<id>_<colour>.<ext>``; its sibling channel files are found next
    to it), a folder holding one sample's channel files (``<colour>.<ext>`` or ``<x>_<colour>.<ext>``),
    a multichannel file (4-plane TIFF or ``.npz``) or a data set folder (listed like ``protloc data
    scan``, in ``format`` or the detected one; its labels are attached when it has a labels file).
    ``height``/``width`` are 0 (not read yet); ``load_entry`` decodes an entry and raises DataError for
    a sample that cannot be used (missing channel, damaged file), so one bad input never hides the rest.
    A path that does not exist, or inputs without any image, are a ProtlocError. Ids are made unique
    by appending ``#2``, ``#3``, ... .
    """
    from protloc.data.index import SampleEntry, list_dataset

    entries: list = []
    used_ids: set[str] = set()

    def add(sample_id: str, sources: dict[str, str], labels=None) -> None:
        candidate, n = sample_id, 1
        while candidate in used_ids:
            n += 1
            candidate = f"{sample_id}#{n}"
        used_ids.add(candidate)
        entries.append(SampleEntry(candidate, sources, labels, 0, 0))

    seen_channel_ids: set[tuple[str, str]] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ProtlocError(f"no such file or folder: {raw}")
        path = path.resolve()
        # --- hook (issue 14): OME-TIFF files/folders and OME-Zarr stores; reader_options = --channels/--projection ---
        from protloc.data.ome import ome_inputs
        if (ome := ome_inputs(path, reader_options)) is not None:
            for sample_id, sources in ome:
                add(sample_id, sources)
            continue
        # --- end hook ---
        if path.is_file():
            parsed = channel_file_id(path)
            if parsed is not None:
                key = (str(path.parent), parsed[0])
                if key in seen_channel_ids:
                    continue  # a sibling channel file of a sample already collected
                seen_channel_ids.add(key)
                sources: dict[str, str] = {}
                for sibling in sorted(path.parent.iterdir()):
                    sib = channel_file_id(sibling)
                    if sib is not None and sib[0] == parsed[0]:
                        sources.setdefault(sib[1], str(sibling))
                add(parsed[0], sources)
            elif _is_multichannel_candidate(path):
                add(path.stem, {"npz" if path.suffix.lower() == ".npz" else "multichannel": str(path)})
            else:
                raise ProtlocError(
                    f"{raw}: not a channel file (<id>_<blue|red|yellow|green>.<ext>), 4-plane TIFF or .npz"
                )
            continue
        # A folder: one sample's channel files, or a whole data set.
        files = [p for p in sorted(path.iterdir()) if p.is_file()]
        folder_channels: dict[str, str] = {}
        for file in files:
            match = FOLDER_CHANNEL_FILE_RE.match(file.name)
            if match:
                folder_channels.setdefault(HPA_COLOURS[match.group("colour").lower()], str(file))
        prefixes = {channel_file_id(f)[0] for f in files if channel_file_id(f) is not None}
        if format in (None, "channels") and len(folder_channels) == len(CHANNELS) and len(prefixes) <= 1 and not any(
            f.suffix.lower() == ".npz" for f in files
        ):
            add(path.name if not prefixes else next(iter(prefixes)), folder_channels)
            continue
        listing = list_dataset(path, format=format, label_set=label_set)
        for sample_id in sorted(listing.sources):
            sources = {k: str(listing.root / v) for k, v in listing.sources[sample_id].items()}
            labels = listing.labels.get(sample_id) if listing.labels is not None else None
            add(sample_id, sources, labels)
    if not entries:
        raise ProtlocError("no input images found")
    return entries
