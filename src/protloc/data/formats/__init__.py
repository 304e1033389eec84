"""The one input layer: which samples a path holds, and each sample read once into what protloc needs.

``discover(paths)`` lists the samples of files, folders and stores (``data scan`` lists a folder the
same way, through ``listing.list_dataset``); ``read(entry)`` answers, in one call, the canonical float32
[4, H, W] (nucleus, microtubules, ER, protein), the pixel size and the file's channel names
(``base.Sample``). Every command (``predict``, ``cells``, ``train``, ``evaluate``), the napari reader and
the platform (after unpacking an archive) go through these two functions and nothing else of the
formats, so they list and read the same samples.

One module per format behind one protocol (``base``): ``channel_files`` (per-channel PNG/TIFF/JPEG,
Kaggle's and HPA's layouts), ``npz`` (the authors' release), ``tiff`` (plain 4-plane TIFF),
``ome_tiff``, ``ome_zarr`` (images, wells, HCS plates). Values read from files are checked where they
enter (``physical``: pixel sizes, image sizes; ``ome_zarr``: missing chunks).
"""

from __future__ import annotations

from pathlib import Path

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.formats import channel_files, npz, ome_tiff, ome_zarr, tiff
from protloc.data.formats.base import Sample
from protloc.data.formats.listing import (
    PATH_KEYS,
    SampleEntry,
    is_whole_sample,
    list_dataset,
    named_channel_sample,
)
from protloc.data.formats.physical import check_image_size
from protloc.data.pixel_size import PixelSize, check_pixel_size
from protloc.errors import DataError, ProtlocError

__all__ = ["Sample", "SampleEntry", "check", "discover", "read", "read_file", "absolute_sources", "format_of",
           "write_localisation_labels"]

_WHOLE = (npz, tiff, ome_tiff, ome_zarr)


def format_of(sources: dict):
    """The format module that reads these sources (their keys say which)."""
    for module in _WHOLE:
        if module.KEY in sources:
            return module
    return channel_files


def absolute_sources(sources: dict[str, str], root: str | Path) -> dict[str, str]:
    """Sources as listed relative to a data folder, with their file paths made absolute (options and
    a store's inner image path stay as they are)."""
    root = Path(root)
    return {key: str(root / value) if key in PATH_KEYS and not Path(value).is_absolute() else value
            for key, value in sources.items()}


def read(entry: SampleEntry | dict, max_pixels: int | None = None, pixel_size: float | None = None) -> Sample:
    """One sample: image, pixel size and channel names, every value checked (DataError: why not).

    ``pixel_size`` (the user's ``--pixel-size``) replaces what the files state, unread.
    """
    sources = entry.sources if isinstance(entry, SampleEntry) else entry
    if isinstance(entry, SampleEntry) and entry.problem is not None:
        raise DataError(entry.problem)
    given = None if pixel_size is None else PixelSize(check_pixel_size(pixel_size), "--pixel-size")
    sample = format_of(sources).read(sources, max_pixels, given)
    where = entry.id if isinstance(entry, SampleEntry) else _where(sources)
    check_image_size(*sample.shape, where)
    return sample


def check(sources: dict[str, str], max_pixels: int | None = None) -> tuple[int, int]:
    """Decode a sample fully and return its (height, width), as ``read`` would accept it (for scans)."""
    module = format_of(sources)
    if module is channel_files:
        height, width = channel_files.check(sources, max_pixels)
    else:
        height, width = module.read(sources, max_pixels).shape
    check_image_size(height, width, _where(sources))
    return height, width


def _where(sources: dict) -> str:
    first = next((v for k, v in sources.items() if k in PATH_KEYS), "sample")
    return Path(first).name


def read_file(path: str | Path, max_pixels: int | None = None) -> Sample:
    """One file holding a whole sample, whatever it is named (an upload stored under its hash): an
    OME-TIFF naming its channels is read by those names, another TIFF as 4 planes in canonical order,
    an ``.npz`` as the authors' release."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return read({npz.KEY: str(path)}, max_pixels)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DataError(f"{path.name}: a multichannel file must be a 4-plane TIFF or an .npz with 'sample'")
    if path.is_file() and ome_tiff.names_its_channels(path):
        return read({ome_tiff.KEY: str(path)}, max_pixels)
    return read({tiff.KEY: str(path)}, max_pixels)


def discover(paths, format: str | None = None, label_set=None, reader_options: dict | None = None
             ) -> list[SampleEntry]:
    """Every sample the paths hold, as SampleEntry with absolute sources, in the order given; nothing
    is decoded (OME metadata is read to list a store's images and check their channels).

    Each path may be a channel file (its sibling channel files are found next to it), a file holding
    a whole sample (4-plane TIFF, ``.npz``, OME-TIFF), an OME-Zarr store (image, well, plate) or a
    folder, listed as ``protloc data scan`` lists it (``list_dataset``: its labels are attached when
    its labels file reads; a broken labels file is ignored). ``height``/``width`` are 0 (not read yet).
    A sample the listing already knows to be unusable has ``problem`` set and ``read`` raises it, so it
    is reported with the unreadable ones. A path that does not exist, or inputs without any image, are
    a ProtlocError. Ids are made unique by appending ``#2``, ``#3``, ... .
    """
    from protloc.data.filenames import is_multichannel_candidate, parse_channel_filename, printable_id

    options = dict(reader_options or {})
    entries: list[SampleEntry] = []
    used_ids: set[str] = set()

    def add(sample_id: str, sources: dict[str, str], labels=None, problem: str | None = None) -> None:
        candidate, n = sample_id, 1
        while candidate in used_ids:
            n += 1
            candidate = f"{sample_id}#{n}"
        used_ids.add(candidate)
        entries.append(SampleEntry(candidate, sources, labels, 0, 0, problem))

    seen_samples: set[tuple[str, str]] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ProtlocError(f"no such file or folder: {raw}")
        path = path.absolute()
        if path.is_dir() and ome_zarr.is_zarr_group(path):
            for sample_id, sources in ome_zarr.list_samples(path, options):
                add(sample_id, sources)
        elif path.is_file() and ome_tiff.is_ome_tiff(path):
            for sample_id, sources in ome_tiff.list_samples(path, options):
                add(sample_id, sources)
        elif path.is_file():
            parsed = parse_channel_filename(path.name)
            if parsed is not None:
                key = (str(path.parent), parsed.prefix or "")
                if key not in seen_samples:  # else a sibling channel file of a sample already collected
                    seen_samples.add(key)
                    sample_id, sources, problem = named_channel_sample(path)
                    missing = [c for c in CHANNELS if c not in sources]
                    if problem is None and missing:  # the reason reading it would give, known now
                        problem = "missing channel " + ", ".join(f"{COLOUR_OF_CHANNEL[c]} ({c})" for c in missing)
                    add(sample_id, sources, problem=problem)
            elif is_multichannel_candidate(path.name):
                add(printable_id(path.stem), {npz.KEY if path.suffix.lower() == ".npz" else tiff.KEY: str(path)})
            else:
                raise ProtlocError(f"{raw}: not a channel file (<id>_<blue|red|yellow|green>.<ext>), 4-plane TIFF, "
                                   ".npz, OME-TIFF or OME-Zarr store")
        else:
            listing = list_dataset(path, format=format, label_set=label_set, need_labels=False, options=options)
            for sample_id in sorted(listing.sources):
                labels = listing.labels.get(sample_id) if listing.labels is not None else None
                add(sample_id, absolute_sources(listing.sources[sample_id], listing.root), labels,
                    listing.problems.get(sample_id))
    if not entries:
        raise ProtlocError("no input images found")
    return entries


def describe_ome(paths, options: dict[str, str] | None = None, limit: int = 5) -> list[str]:
    """One line per OME input saying which of its channels became which and its pixel size, so that
    nothing is assumed silently (``cells.ome.tif: DAPI -> nucleus, ...; pixel size 0.08 µm``). A plate
    is described by its first field (its fields share their channels)."""
    lines = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            continue
        try:
            listed = [e for e in discover([path.absolute()], reader_options=options)
                      if ome_tiff.KEY in e.sources or ome_zarr.KEY in e.sources]
        except ProtlocError:
            continue  # the run itself reports it
        for entry in listed[:1]:
            try:
                names, size = format_of(entry.sources).header_of(entry.sources)
            except (DataError, ProtlocError):
                continue
            mapping = ", ".join(f"{name} -> {channel}" for name, channel in zip(names, CHANNELS))
            stated = f"pixel size {size.um:.4g} µm" if size.known else "pixel size not stated in the file"
            more = f" (and {len(listed) - 1} more samples like it)" if len(listed) > 1 else ""
            lines.append(f"{entry.id}{more}: {mapping}; {stated}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more OME inputs"]
    return lines


def write_localisation_labels(sources: dict, maps, classes: list[str]) -> Path | None:
    """Where the format keeps labels beside the pixels (OME-Zarr: ``labels/protloc-localisation``),
    the localisation maps are written there; None for formats without such a place."""
    if ome_zarr.KEY not in sources:
        return None
    return ome_zarr.write_localisation_labels(sources, maps, classes)
