"""OME-Zarr (NGFF 0.4 and 0.5) input, and label images written back the NGFF way.

A store is one image (``multiscales``), a well (``well``), an HCS plate (``plate``: each field of each
well is a sample, id ``<plate>/<row>/<column>/<field>``) or a bioformats2raw container of images.
Listing reads only metadata; each field is read when its turn comes, at its full resolution (the
first dataset of its ``multiscales``), so a plate of any size runs in the memory of one field.
Channel names come from ``omero.channels[].label``, the pixel size from the ``scale`` transformations
of the y and x axes in their unit.

``write_label_image`` puts an integer image (cell masks, thresholded localisation maps) under the
field's ``labels/`` group with ``image-label`` metadata, through ome-zarr's writer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from protloc.data.formats.base import Sample
from protloc.data.formats.ome import (
    OPTION_ALLOW_SPARSE,
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

KEY = "ome-zarr"
IMAGE_KEY = "ome-zarr-image"  # path of the image group inside the store ("" for the root)
_ZARR_MARKERS: tuple[str, ...] = ("zarr.json", ".zgroup", ".zattrs", ".zarray")


def is_zarr_group(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


def store_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open_group(path: Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for a broken or non-group store
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtlocError(f"{path}: not a readable Zarr group ({reason})") from None


def ngff_attributes(group) -> dict:
    """The NGFF metadata of a group: under ``ome`` in 0.5 (zarr.json), at the top in 0.4 (.zattrs)."""
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def _channel_names(meta: dict, count: int) -> list[str]:
    channels = (meta.get("omero") or {}).get("channels") or []
    names = [str(c.get("label") or "") for c in channels if isinstance(c, dict)]
    if len(names) != count or not all(names):
        return [f"channel {i}" for i in range(count)]
    return names


def _axes(multiscale: dict, ndim: int, where: str) -> tuple[str, list[dict]]:
    raw = multiscale.get("axes")
    if raw is None:  # NGFF 0.1/0.2: always tczyx
        raw = ["t", "c", "z", "y", "x"][-ndim:]
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in raw]
    letters = ""
    for axis in axes:
        name, kind = str(axis.get("name", "")).lower(), str(axis.get("type", "")).lower()
        letter = "C" if kind == "channel" or name == "c" else name.upper()
        if letter not in ("T", "C", "Z", "Y", "X"):
            raise DataError(f"{where}: unsupported axis {axis.get('name')!r}")
        letters += letter
    if len(letters) != ndim:
        raise DataError(f"{where}: metadata names {len(letters)} axes for an array of {ndim} dimensions")
    return letters, axes


def _scale(transformations: list | None, ndim: int) -> np.ndarray:
    scale = np.ones(ndim)
    for transform in transformations or []:
        if transform.get("type") == "scale" and transform.get("scale") is not None:
            scale *= np.asarray(transform["scale"], dtype=float)
    return scale


@contextmanager
def _ngff_metadata(where: str):
    """Metadata is the user's JSON: a field of the wrong type (``"multiscales": 5``) is a one-line
    refusal naming the store, not a TypeError from deep inside the reader."""
    try:
        yield
    except (DataError, ProtlocError):
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        raise DataError(f"{where}: malformed OME-NGFF metadata ({type(exc).__name__}: {exc})") from None


def _image_header(group, where: str) -> dict:
    """The full-resolution array, its axes, channel names and pixel size; metadata only."""
    with _ngff_metadata(where):
        return _read_image_header(group, where)


def _read_image_header(group, where: str) -> dict:
    meta = ngff_attributes(group)
    multiscales = meta.get("multiscales")
    if not multiscales:
        raise DataError(f"{where}: no NGFF 'multiscales' metadata")
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise DataError(f"{where}: 'multiscales' lists no datasets")
    try:
        array = group[datasets[0]["path"]]  # the first dataset is the full resolution
    except KeyError:
        raise DataError(f"{where}: dataset {datasets[0].get('path')!r} is missing") from None
    letters, axes = _axes(multiscale, array.ndim, where)
    scale = _scale(datasets[0].get("coordinateTransformations"), array.ndim) * _scale(
        multiscale.get("coordinateTransformations"), array.ndim
    )
    physical = None  # ((y scale, unit), (x scale, unit)) as written; checked when the pixel size is asked for
    units = {letters[i]: axes[i].get("unit") for i in range(len(axes))}
    if "Y" in letters and "X" in letters and units.get("Y") and units.get("X"):
        physical = ((scale[letters.index("Y")], units["Y"]), (scale[letters.index("X")], units["X"]))
    count = array.shape[letters.index("C")] if "C" in letters else 1
    return {"array": array, "axes": letters, "names": _channel_names(meta, count), "physical": physical}


def _pixel_size(header: dict, where: str) -> PixelSize:
    """The NGFF scale of the y and x axes in µm, checked (DataError naming the image and the axes)."""
    if header["physical"] is None:
        return UNKNOWN
    return physical_pixel_size(*header["physical"], where, "NGFF scale ")


def _check_chunks(array, where: str) -> None:
    """Every chunk of the array is in the store. Zarr reads a chunk that was never written as the
    array's fill value: a store copied in part, or a writer that died, would give silent zeros (issue
    23) and the blank image's answer. A store written sparse on purpose is read with --allow-sparse-zarr."""
    try:
        total, present = int(array.nchunks), int(array.nchunks_initialized)
    except Exception:  # noqa: BLE001  a store that cannot count its chunks is read as it is
        return
    if present < total:
        raise DataError(f"{where}: {total - present} of {total} chunks are missing from the store (zarr would "
                        "read them as zeros); restore them, or add --allow-sparse-zarr if the store is sparse on purpose")


def _check_header(header: dict, sources: dict[str, str], where: str) -> list[int]:
    if "C" not in header["axes"]:
        raise DataError(f"{where} holds a single channel; protloc needs 4: nucleus, microtubules, ER, protein")
    order = match_channels(header["names"], sources.get(OPTION_CHANNELS), where)
    if sources.get(OPTION_PROJECTION) is None:
        shape = dict(zip(header["axes"], header["array"].shape))
        for axis, what in (("Z", "a Z-stack"), ("T", "a time series")):
            if shape.get(axis, 1) > 1:
                raise DataError(
                    f"{where} is {what} of {shape[axis]} planes: protloc reads 2-D fields; "
                    "add --projection max (or mean) to project it"
                )
    return order


def _plate_fields(root, meta: dict) -> list[str]:
    fields = []
    for well in meta["plate"].get("wells") or []:
        well_path = str(well["path"] if isinstance(well, dict) else well)
        try:
            well_meta = ngff_attributes(root[well_path])
        except KeyError:
            continue  # a well the plate lists but never imaged
        for image in (well_meta.get("well") or {}).get("images") or []:
            fields.append(f"{well_path}/{image['path']}")
    return fields


def list_samples(path: str | Path, options: dict[str, str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """The samples of an OME-Zarr store as ``(id, sources)``; reads metadata only.

    ProtlocError for a Zarr store without NGFF metadata, a plate without fields, or channels that
    cannot be matched (checked on the first image: the fields of a plate share their channels).
    """
    path = Path(path).resolve()
    root = _open_group(path)
    meta = ngff_attributes(root)
    name = store_name(path)
    try:
        with _ngff_metadata(path.name):
            images, ids = _listed_images(root, meta, name, path)
    except DataError as exc:
        raise ProtlocError(str(exc)) from None
    if not images:
        raise ProtlocError(f"{path.name}: the OME-Zarr store lists no images")
    options = dict(options or {})
    first = images[0]
    try:
        _check_header(_image_header(root[first] if first else root, ids[0]), options, ids[0])
    except DataError as exc:
        raise ProtlocError(str(exc)) from None
    return [(sample_id, {KEY: str(path), IMAGE_KEY: image, **options}) for sample_id, image in zip(ids, images)]


def _listed_images(root, meta: dict, name: str, path: Path) -> tuple[list[str], list[str]]:
    if "plate" in meta:
        images = _plate_fields(root, meta)
        ids = [f"{name}/{image}" for image in images]
    elif "well" in meta:
        images = [str(image["path"]) for image in meta["well"].get("images") or []]
        ids = [f"{name}/{image}" for image in images]
    elif "multiscales" in meta:
        images, ids = [""], [name]
    elif "bioformats2raw.layout" in meta:
        numbered = sorted((key for key in root.group_keys() if key.isdigit()), key=int)  # series 0, 1, ...
        images = [key for key in numbered if "multiscales" in ngff_attributes(root[key])]
        ids = [f"{name}/{image}" for image in images]
    else:
        raise ProtlocError(
            f"{path.name} is a Zarr store without OME-NGFF metadata (no multiscales, plate or well): "
            "write it as OME-Zarr (e.g. with ome-zarr-py or bioformats2raw)"
        )
    return images, ids


def header_of(sources: dict[str, str]) -> tuple[tuple[str, ...], PixelSize]:
    """Channel names in CHANNELS order and pixel size of one listed image, from metadata only."""
    path = Path(sources[KEY])
    image_path = sources.get(IMAGE_KEY, "")
    root = _open_group(path)
    where = f"{store_name(path)}/{image_path}".rstrip("/")
    header = _image_header(root[image_path] if image_path else root, where)
    order = _check_header(header, sources, where)
    return tuple(header["names"][i] for i in order), _pixel_size(header, where)


def read(sources: dict[str, str], max_pixels: int | None = None, given: PixelSize | None = None) -> Sample:
    """One image of an OME-Zarr store (full resolution, channels matched by name, every chunk present
    unless the sources allow a sparse store) with its stated pixel size."""
    path = Path(sources[KEY])
    image_path = sources.get(IMAGE_KEY, "")
    where = f"{store_name(path)}/{image_path}".rstrip("/")
    try:
        root = _open_group(path)
        group = root[image_path] if image_path else root
    except (ProtlocError, KeyError) as exc:
        raise DataError(f"{where}: cannot open the image ({exc})") from None
    header = _image_header(group, where)
    order = _check_header(header, sources, where)
    check_size(tuple(header["array"].shape), header["axes"], where, max_pixels)
    size = given or _pixel_size(header, where)
    if not sources.get(OPTION_ALLOW_SPARSE):
        _check_chunks(header["array"], where)
    try:
        array = np.asarray(header["array"][...])
    except Exception as exc:  # a missing or damaged chunk
        raise DataError(f"{where}: unreadable pixels ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    array, axes = flatten_extra_axes(array, header["axes"], sources.get(OPTION_PROJECTION), where)
    image = to_canonical(array, axes, order, where)
    return Sample(image, size, tuple(header["names"][i] for i in order))


def write_label_image(
    store: str | Path,
    image_path: str,
    name: str,
    labels: np.ndarray,
    *,
    properties: list[dict] | None = None,
    colors: list[dict] | None = None,
    source: dict | None = None,
) -> Path:
    """Write an integer [H, W] image as ``<image>/labels/<name>`` (NGFF ``image-label``) and list it.

    ``labels`` must have the image's height and width; 0 is background. ``properties`` and ``colors``
    are NGFF's per-label-value lists (``{"label-value": 1, ...}``). The label image gets the image's
    axes without the channel axis and the image's pixel size. Rewriting a name replaces it.
    """
    from ome_zarr.writer import add_metadata, get_metadata, write_labels

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ProtlocError(f"a label image is an integer [height, width] array, got {labels.dtype} {list(labels.shape)}")
    root = _open_group(Path(store), mode="r+")
    group = root[image_path] if image_path else root
    where = f"{store_name(Path(store))}/{image_path}".rstrip("/")
    header = _image_header(group, where)
    shape = dict(zip(header["axes"], header["array"].shape))
    if (shape["Y"], shape["X"]) != labels.shape:
        raise ProtlocError(f"{where}: label image {list(labels.shape)} does not match the image {shape['Y']}x{shape['X']}")
    # NGFF: a label image has the image's axes except the channel axis.
    meta = ngff_attributes(group)["multiscales"][0]
    _, axes = _axes(meta, len(header["axes"]), where)
    kept = [a for a, letter in zip(axes, header["axes"]) if letter != "C"]
    letters = [letter for letter in header["axes"] if letter != "C"]
    data = labels.reshape([1] * (len(letters) - 2) + list(labels.shape))
    scale = {letter.lower(): 1.0 for letter in letters}
    units = {a["name"]: a["unit"] for a in kept if a.get("unit")}
    stated = _pixel_size(header, where) if header["physical"] is not None else UNKNOWN
    if stated.known:  # the image's own y and x scale, in micrometres
        scale["y"] = physical_pixel_size(header["physical"][0], header["physical"][0], where, "NGFF scale ").um
        scale["x"] = stated.um
        units.update({"y": "micrometer", "x": "micrometer"})
    # the names listed by the labels group (not the image group): other label images stay listed
    existing = [n for n in get_metadata(group["labels"]).get("labels", []) if n != name] if "labels" in group else None
    if existing is not None:
        add_metadata(group["labels"], {"labels": existing})
        if name in group["labels"]:
            del group["labels"][name]
    label_metadata = {}
    if properties is not None:
        label_metadata["properties"] = properties
    if colors is not None:
        label_metadata["colors"] = colors
    if source is not None:
        label_metadata["source"] = source
    write_labels(data, group, name=name, scaler=None, scale_factors=(), axes=[a.lower() for a in letters],
                 scale=scale, axes_units=units or None, label_metadata=label_metadata)
    return Path(store) / image_path / "labels" / name


def class_label_image(maps: dict[str, np.ndarray], classes: list[str], threshold: float = 0.5
                      ) -> tuple[np.ndarray, list[dict]]:
    """Localisation maps as one label image: each pixel is 1 + the index (in ``classes``) of its
    strongest class where that map reaches ``threshold``, else 0; with NGFF properties naming them."""
    names = [c for c in classes if c in maps]
    if not names:
        raise ProtlocError("no localisation maps to write")
    stack = np.stack([np.asarray(maps[c], dtype=np.float32) for c in names])
    strongest = stack.argmax(axis=0)
    values = np.array([classes.index(c) + 1 for c in names], dtype=np.uint16)
    labels = np.where(stack.max(axis=0) >= threshold, values[strongest], 0).astype(np.uint16)
    properties = [{"label-value": int(classes.index(c) + 1), "class": c} for c in names]
    return labels, properties


LOCALISATION_LABELS = "protloc-localisation"


def write_localisation_labels(sources: dict, maps: dict[str, np.ndarray], classes: list[str],
                              threshold: float = 0.5) -> Path | None:
    """For a sample read from OME-Zarr: its localisation maps as ``labels/protloc-localisation`` (value
    1 + class index where that class's map is strongest and reaches ``threshold``); None for others.

    A store the user cannot write to is left alone (ProtlocError), never half-written.
    """
    import os

    if KEY not in sources:
        return None
    store = Path(sources[KEY])
    if not os.access(store, os.W_OK):
        raise ProtlocError(f"{store.name} is read-only: the localisation labels cannot be written beside the image")
    labels, properties = class_label_image(maps, classes, threshold)
    colours = _class_colours(len(classes))
    colors = [{"label-value": p["label-value"], "rgba": colours[p["label-value"] - 1]} for p in properties]
    return write_label_image(store, sources.get(IMAGE_KEY, ""), LOCALISATION_LABELS, labels, properties=properties,
                             colors=colors, source={"image": "../../"})


def _class_colours(count: int) -> list[list[int]]:
    from matplotlib import colormaps

    table = colormaps["tab20"]
    return [[int(round(255 * c)) for c in table(i % 20)] for i in range(count)]
