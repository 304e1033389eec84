"""``--masks store.ome.zarr``: cell and nucleus masks from the NGFF ``labels/`` of an OME-Zarr image.

NGFF keeps an image's label images under ``<image>/labels/<name>``, listed in ``labels/``'s
metadata (``"labels": [names]``), each one a ``multiscales`` group whose first dataset is the full
resolution. Which one holds the cells is not standardised: a name that says cells (``CELL_NAMES``)
is taken, else the only label image that is not protloc's own localisation labels; nuclei likewise
(``NUCLEI_NAMES``), optional.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protloc.cells.label_ids import checked_label_ids
from protloc.errors import DataError, ProtlocError

CELL_NAMES = ("cells", "cell", "cellmask", "cell_mask", "cell-mask", "cell_masks", "cellmasks", "cell_labels")
NUCLEI_NAMES = ("nuclei", "nucleus", "nucleimask", "nuclei_mask", "nuclei-mask", "nuclear", "nuclei_labels")


class ZarrLabels:
    """Label images of the images of one OME-Zarr store."""

    def __init__(self, store: Path) -> None:
        from protloc.data.formats.ome_zarr import _listed_images, _open_group, ngff_attributes, store_name

        self.store = Path(store).resolve()
        self.root = _open_group(self.store)
        try:
            self.images, _ = _listed_images(self.root, ngff_attributes(self.root), store_name(self.store), self.store)
        except DataError as exc:
            raise ProtlocError(f"--masks {store}: {exc}") from None
        if not any(self._names(image) for image in self.images):
            raise ProtlocError(f"--masks {self.store.name}: no image of the store has NGFF labels (labels/)")

    def _names(self, image_path: str) -> list[str]:
        from protloc.data.formats.ome_zarr import ngff_attributes

        group = self.root[image_path] if image_path else self.root
        try:
            labels = group["labels"]
        except KeyError:
            return []
        return [str(name) for name in ngff_attributes(labels).get("labels") or []]

    def _image_path(self, entry) -> str:
        from protloc.data.formats.ome_zarr import IMAGE_KEY, KEY as SOURCE_KEY

        if SOURCE_KEY in entry.sources and Path(entry.sources[SOURCE_KEY]).resolve() == self.store:
            return entry.sources.get(IMAGE_KEY, "")
        if len(self.images) == 1:
            return self.images[0]
        raise DataError(f"{entry.id} is not an image of {self.store.name}, which holds {len(self.images)} images: "
                        "give the store itself as the input")

    def _read(self, image_path: str, name: str, shape: tuple[int, int]) -> np.ndarray:
        from protloc.data.formats.ome_zarr import ngff_attributes

        where = f"{self.store.name}/{image_path}/labels/{name}".replace("//", "/")
        try:
            group = (self.root[image_path] if image_path else self.root)["labels"][name]
            datasets = ngff_attributes(group)["multiscales"][0]["datasets"]
            array = np.asarray(group[datasets[0]["path"]][...])
        except (KeyError, IndexError, TypeError) as exc:
            raise DataError(f"{where}: not an NGFF label image ({type(exc).__name__}: {exc})") from None
        except Exception as exc:  # a missing or damaged chunk
            raise DataError(f"{where}: unreadable ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        labels = checked_label_ids(array, where)
        if labels.shape != tuple(shape):
            raise DataError(f"{where} is {labels.shape[0]}x{labels.shape[1]} but the image is {shape[0]}x{shape[1]}")
        return labels

    def read(self, entry, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        from protloc.data.formats.ome_zarr import LOCALISATION_LABELS

        image_path = self._image_path(entry)
        names = self._names(image_path)
        lowered = {name.lower(): name for name in names}
        cells = next((lowered[n] for n in CELL_NAMES if n in lowered), None)
        nuclei = next((lowered[n] for n in NUCLEI_NAMES if n in lowered), None)
        if cells is None:
            others = [n for n in names if n not in (nuclei, LOCALISATION_LABELS)]
            if len(others) != 1:
                where = f"{self.store.name}/{image_path}".rstrip("/")
                raise DataError(f"{where}: no cell labels among {names or 'its labels (none)'}; name them 'cells'")
            cells = others[0]
        return self._read(image_path, cells, shape), (self._read(image_path, nuclei, shape) if nuclei else None)
