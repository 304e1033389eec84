"""The one per-channel normalisation of protloc, as in the paper: ``(x - mean) / (std + EPSILON)``.

Training crops, covering patches, whole images, the maps and the expert study's features all go
through ``normalize``; GapNet-PL's fast path (``protloc.inference.gapnet_pl_fast``) computes the same
rule in its first convolution with the same ``EPSILON``. A model file records it as
``NORMALIZATION`` and ``protloc.inference.predictor.load_model`` refuses a file that asks for another.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7
NORMALIZATION = {"kind": "per-channel-zscore", "eps": EPSILON}


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def normalize(image):
    """Per channel ``(x - mean) / (std + 1e-7)``, float32, population std, over the last two axes.

    [C, H, W] normalises each channel; [N, C, H, W] each channel of each image. Takes numpy arrays
    or torch tensors and returns the same kind (torch on the tensor's device).
    """
    if _is_torch(image):
        x = image.float()
        mean = x.mean(dim=(-2, -1), keepdim=True)
        # correction=0: the population std, as numpy's (torch's default would be the sample std)
        std = x.std(dim=(-2, -1), keepdim=True, correction=0)
        return (x - mean) / (std + EPSILON)
    x = np.asarray(image, dtype=np.float32)
    # Statistics in float64: sums over millions of 16-bit pixels lose precision in float32.
    mean = x.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
    std = x.std(axis=(-2, -1), keepdims=True, dtype=np.float64)
    return ((x - mean) / (std + EPSILON)).astype(np.float32)
