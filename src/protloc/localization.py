"""Localisation maps: where in an image the evidence for a class lies."""

from __future__ import annotations

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


def class_activation_maps(network, image: np.ndarray, class_indices: list[int], device=None) -> list[np.ndarray]:
    """CAMs through GapNet-PL's global-average features.

    The logit depends on the image only through the channel means of the three blocks, so
    d(logit)/d(mean feature) times each feature map, summed over channels, is a per-location
    first-order share of the logit; the three blocks' maps are upsampled to the image and summed.
    """
    from protloc.data.patches import normalize

    device = device or torch.device("cpu")
    x = torch.from_numpy(normalize(image))[None].to(device)
    height, width = image.shape[-2:]
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            blocks = [b.detach().requires_grad_(False) for b in network.blocks(x)]
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


@torch.no_grad()
def sliding_window_maps(
    network, image: np.ndarray, class_indices: list[int], patch_size: int, device=None, batch_size: int = 8
) -> list[np.ndarray]:
    """Per-class probability of patches on a half-patch grid, painted back and averaged where they overlap."""
    from protloc.data.patches import normalize

    device = device or torch.device("cpu")
    channels, height, width = image.shape
    padded_h, padded_w = max(height, patch_size), max(width, patch_size)
    padded = np.zeros((channels, padded_h, padded_w), dtype=np.float32)
    padded[:, :height, :width] = image
    stride = max(1, patch_size // 2)
    ys = sorted({*range(0, padded_h - patch_size + 1, stride), padded_h - patch_size})
    xs = sorted({*range(0, padded_w - patch_size + 1, stride), padded_w - patch_size})
    corners = [(y, x) for y in ys for x in xs]
    total = np.zeros((len(class_indices), padded_h, padded_w), dtype=np.float32)
    count = np.zeros((padded_h, padded_w), dtype=np.float32)
    network.eval()
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        batch = np.stack([normalize(padded[:, y : y + patch_size, x : x + patch_size]) for y, x in chunk])
        probs = torch.sigmoid(network(torch.from_numpy(batch).to(device))).cpu().numpy()[:, class_indices]
        for (y, x), p in zip(chunk, probs):
            total[:, y : y + patch_size, x : x + patch_size] += p[:, None, None]
            count[y : y + patch_size, x : x + patch_size] += 1
    averaged = total / np.maximum(count, 1)
    # Probabilities are meaningful as they are (0.5 is the decision threshold), so they are not rescaled.
    return [np.clip(m[:height, :width], 0.0, 1.0) for m in averaged]
