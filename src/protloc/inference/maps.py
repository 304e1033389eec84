"""Localisation maps: where in an image the evidence for a class lies.

GapNet-PL: class activation maps through its global-average features. The other networks: the
probabilities of patches on a half-patch grid, computed by the one ``Inferer`` and painted back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


def _normalise_map(heat: np.ndarray) -> np.ndarray:
    # Scale by a high percentile of the positive evidence, not its single peak, so that a few hot
    # pixels do not make the rest of the evidence invisible.
    heat = np.maximum(heat, 0.0)
    positive = heat[heat > 0]
    if positive.size == 0:
        return heat.astype(np.float32)
    scale = np.percentile(positive, 99.0)
    return np.clip(heat / scale, 0.0, 1.0).astype(np.float32)


def class_activation_maps(network, image: np.ndarray, class_indices: list[int], device=None,
                          blocks: tuple[torch.Tensor, ...] | None = None) -> list[np.ndarray]:
    """CAMs through GapNet-PL's global-average features.

    The logit depends on the image only through the channel means of the three blocks, so
    d(logit)/d(mean feature) times each feature map, summed over channels, is a per-location
    first-order share of the logit; the three blocks' maps are upsampled to the image and summed.

    The block maps come from GapNet-PL's fast path (``protloc.inference.gapnet_pl_fast``: the
    normalisation folded into the first convolution, channels-last; equal to ``network.blocks`` of
    the normalised image within float rounding, about twice as fast on a CPU), or from the caller
    (``blocks``: the maps of this image, e.g. ``network.blocks(normalize(image))``).
    """
    from protloc.inference.gapnet_pl_fast import block_maps

    device = device or torch.device("cpu")
    height, width = image.shape[-2:]
    was_training = network.training
    network.eval()
    try:
        if blocks is None:
            with torch.no_grad():  # the maps need gradients through the head only, not the convolutions
                blocks = block_maps(network, torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device))
        blocks = [block.detach() for block in blocks]
        with torch.enable_grad():
            pooled = torch.cat([b.mean(dim=(2, 3)) for b in blocks], dim=1).requires_grad_(True)
            logits = network.head(pooled)[0]
            maps = []
            for index in class_indices:
                (grad,) = torch.autograd.grad(logits[index], pooled, retain_graph=True)
                heat = torch.zeros(1, 1, height, width, device=device)
                offset = 0
                for block in blocks:
                    channels = block.shape[1]
                    weights = grad[0, offset : offset + channels].view(1, channels, 1, 1)
                    offset += channels
                    block_map = (weights * block).sum(dim=1, keepdim=True)
                    heat += F.interpolate(block_map, size=(height, width), mode="bilinear", align_corners=False)
                maps.append(_normalise_map(heat[0, 0].cpu().numpy()))
    finally:
        network.train(was_training)
    return maps


def window_grid(height: int, width: int, patch_size: int) -> list[tuple[int, int]]:
    """Top-left corners of patches on a half-patch stride covering a (padded) height x width image."""
    height, width = max(height, patch_size), max(width, patch_size)
    stride = max(1, patch_size // 2)
    ys = sorted({*range(0, height - patch_size + 1, stride), height - patch_size})
    xs = sorted({*range(0, width - patch_size + 1, stride), width - patch_size})
    return [(y, x) for y in ys for x in xs]


def sliding_window_maps(inferer, image: np.ndarray, class_indices: list[int]) -> list[np.ndarray]:
    """Per-class probability of patches on a half-patch grid (``inferer.window_outputs``), painted
    back and averaged where they overlap; [H, W] maps in [0, 1]."""
    height, width = image.shape[-2:]
    size = inferer.patch_size
    corners = window_grid(height, width, size)
    probs = inferer.window_outputs(image, corners)[:, class_indices]
    total = np.zeros((len(class_indices), max(height, size), max(width, size)), dtype=np.float32)
    count = np.zeros(total.shape[1:], dtype=np.float32)
    for (y, x), p in zip(corners, probs):
        total[:, y : y + size, x : x + size] += p[:, None, None]
        count[y : y + size, x : x + size] += 1
    averaged = total / np.maximum(count, 1)
    # Probabilities are meaningful as they are (0.5 is the decision threshold), so they are not rescaled.
    return [np.clip(m[:height, :width], 0.0, 1.0) for m in averaged]


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_maps(predictor, sample_id: str, image: np.ndarray, probs: np.ndarray, predicted: list[str], folder: Path,
               sources: dict | None = None) -> list[Path]:
    """Composite plus one overlay per predicted class (the most probable one when none passes its threshold):
    ``{stem}__composite.png`` and ``{stem}__{class}.png``, ``stem = protloc.files.sample_file_stem(sample_id)``."""
    from protloc import visualization as render
    from protloc.files import sample_file_stem

    classes = predicted or [predictor.classes[int(np.argmax(probs))]]
    maps = predictor.localization_maps(image, classes)
    stem = sample_file_stem(sample_id)
    composite = render.composite(image)
    written = [render.save_png(folder / f"{stem}__composite.png", composite)]
    for cls, heat in maps.items():
        written.append(render.save_png(folder / f"{stem}__{_safe_name(cls)}.png",
                                       render.overlay_map(image, heat, base=composite)))
    # The input's format keeps the maps beside its pixels where it has a place for labels (OME-Zarr).
    from protloc.data.formats import write_localisation_labels
    if (labels := write_localisation_labels(sources or {}, maps, predictor.classes)) is not None:
        written.append(labels)
    return written
