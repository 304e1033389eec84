"""What every input format answers about one sample, in one call.

A format module (``channel_files``, ``npz``, ``tiff``, ``ome_tiff``, ``ome_zarr``) owns one key of a
listed sample's ``sources`` (``KEY``; channel files own the channel names) and provides

- ``read(sources, max_pixels=None, pixel_size=None) -> Sample``: the canonical float32 [4, H, W]
  (nucleus, microtubules, ER, protein; raw intensities), the pixel size its files state or its layout
  implies (``pixel_size``, the user's ``--pixel-size``, replaces it and the files' metadata is then not
  consulted) and the names its channels had in the file; DataError (one line) when it cannot be used;
- where it lists its own samples (OME-TIFF, OME-Zarr), ``list_samples(path, options)``;
- where labels go back into the input (OME-Zarr), ``write_labels``.

``protloc.data.formats`` picks the module from the sources and is the only caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protloc.data.channels import CHANNELS
from protloc.data.pixel_size import PixelSize


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 [4, H, W] in CHANNELS order, raw intensities
    pixel_size: PixelSize  # stated by the files, implied by the layout, given by the user, or unknown
    channel_names: tuple[str, ...] = CHANNELS  # the file's names of nucleus, microtubules, ER, protein

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])
