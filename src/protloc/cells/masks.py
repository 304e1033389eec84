"""Label images users bring (Cellpose, HPA-Cell-Segmentation, their own) and the ones protloc writes.

A folder holds ``<id>_cellmask.<png|tif|tiff>`` per image and optionally ``<id>_nucleimask.<ext>``:
single-plane integer images, 0 = background, each cell one positive id. Ids need not be consecutive
(gaps are kept: a cell keeps the id its mask gives it, so results map back onto the user's mask).
protloc writes its own segmentations in the same layout (16-bit PNG), so they can be edited and fed
back with ``--masks``. Next to an OME-TIFF the names are ``<id>_cellmask.ome.tif`` or ``.tif``, the id
being the OME-TIFF's (its name without ``.ome.tif``).

An OME-Zarr store instead of a folder: each image's NGFF ``labels/`` group (as ``protloc.data.formats.ome_zarr``
writes them, or napari, ome-zarr-py and others): the label image named like cells (``cells``,
``cell``, ``cellmask``, ``cell_mask``, ...) for the cells, one named like nuclei for the nuclei. An
input read from that same store finds its labels under its own image path; any other input (a
TIFF, channel files) uses the store's single image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from protloc.cells.label_ids import checked_label_ids
from protloc.data.filenames import CELL_MASK_SUFFIX, NUCLEI_MASK_SUFFIX
from protloc.errors import DataError, ProtlocError

MASK_EXTENSIONS = (".png", ".ome.tif", ".ome.tiff", ".tif", ".tiff")
CELL_SUFFIX, NUCLEI_SUFFIX = CELL_MASK_SUFFIX, NUCLEI_MASK_SUFFIX


def _find(folder: Path, image_id: str, suffix: str) -> Path | None:
    for ext in MASK_EXTENSIONS:
        for candidate in (folder / f"{image_id}{suffix}{ext}", folder / f"{image_id}{suffix}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_label_image(path: str | Path) -> np.ndarray:
    """A label image as int32 [H, W]; DataError for colour images, negative or fractional ids."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as picture:
                picture.load()
                if picture.mode in ("RGB", "RGBA", "P", "CMYK"):
                    raise DataError(f"{path.name}: a colour image ({picture.mode}), not a label image of integer ids")
                array = np.asarray(picture)
    except DataError:
        raise
    except Exception as exc:  # decoders raise many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"unreadable mask {path.name}: {reason}") from None
    return checked_label_ids(array, path.name)


def read_masks(folder: str | Path, image_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(cells, nuclei or None) for one image from a masks folder, checked against the image's size."""
    folder = Path(folder)
    cell_path = _find(folder, image_id, CELL_SUFFIX)
    if cell_path is None:
        raise DataError(f"no {image_id}{CELL_SUFFIX}.png|tif in {folder}")
    cells = read_label_image(cell_path)
    if cells.shape != tuple(shape):
        raise DataError(
            f"{cell_path.name} is {cells.shape[0]}x{cells.shape[1]} but the image is {shape[0]}x{shape[1]}"
        )
    nuclei_path = _find(folder, image_id, NUCLEI_SUFFIX)
    nuclei = None
    if nuclei_path is not None:
        nuclei = read_label_image(nuclei_path)
        if nuclei.shape != tuple(shape):
            raise DataError(
                f"{nuclei_path.name} is {nuclei.shape[0]}x{nuclei.shape[1]} but the image is {shape[0]}x{shape[1]}"
            )
    return cells, nuclei


def check_masks_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ProtlocError(f"--masks {folder}: no such folder")
    return folder


class MaskFolder:
    """``--masks DIR``: ``<id>_cellmask.<ext>`` (and ``_nucleimask``) per image."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def read(self, entry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        return read_masks(self.folder, entry.id, shape)


def open_masks(path: str | Path):
    """The mask source of ``--masks``: an OME-Zarr store (``ZarrLabels``) or a folder (``MaskFolder``)."""
    from protloc.data.formats.ome_zarr import is_zarr_group

    path = Path(path)
    if is_zarr_group(path):
        from protloc.cells.zarr_masks import ZarrLabels

        return ZarrLabels(path)
    return MaskFolder(check_masks_folder(path))


def write_label_image(path: str | Path, labels: np.ndarray) -> Path:
    """protloc's one label-image writer: 16-bit PNG, or 32-bit TIFF (``path`` with suffix ``.tif``)
    when ids exceed 65535, the layout ``read_masks`` reads back; written atomically (a reader never
    sees half a file) and reproducibly (no date or software tags). Returns the path written."""
    from protloc.files import atomic_write

    path = Path(path)
    if labels.size and int(labels.max()) > 65535:
        import tifffile

        path = path.with_suffix(".tif")
        buffer = io.BytesIO()  # tifffile wants a named file or a seekable buffer, not a bare descriptor
        tifffile.imwrite(buffer, labels.astype(np.uint32), photometric="minisblack", metadata=None,
                         software=False, datetime=None)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
        return path
    from PIL import Image

    picture = Image.fromarray(labels.astype(np.uint16))
    # zlib's fastest level: a label image is long runs of one id, 3x the size of the default level's
    # file (tens of kB) in 60% of the time (the web worker writes one per submission).
    atomic_write(path, lambda handle: picture.save(handle, format="PNG", compress_level=1))
    return path
