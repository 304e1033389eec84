"""The one check every mask reader applies to a label image it read (a folder's PNG/TIFF, an OME-Zarr
store's labels): a module of its own so that both readers share it without importing each other."""

from __future__ import annotations

import numpy as np

from protloc.errors import DataError


def checked_label_ids(array: np.ndarray, where: str) -> np.ndarray:
    """A label image of non-negative whole-number ids as int32 (booleans and whole floats accepted),
    else a DataError naming ``where``: every mask reader's one check."""
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DataError(f"{where}: a label image must be one plane, got shape {list(array.shape)}")
    if array.dtype.kind == "b":
        array = array.astype(np.int32)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{where}: cell ids must be whole numbers")
    elif array.dtype.kind not in "iu":
        raise DataError(f"{where}: unsupported mask type {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError(f"{where}: negative cell ids")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise DataError(f"{where}: cell ids above 2^31")
    return array.astype(np.int32)
