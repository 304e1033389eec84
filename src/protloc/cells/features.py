"""Per-cell embeddings and probabilities.

GapNet-PL (``masked_features``): the network's head reads the global averages of its three block
feature maps (32 + 64 + 128 = 224 values). Averaging the same maps over one cell's footprint instead
of the whole image gives that cell's 224-value embedding, and the unchanged dense head turns it into
that cell's probabilities. The cell mask is carried to each map's grid as the fraction of every grid
cell it covers (block 1 has a stride of 4 px, blocks 2 and 3 of 16 px), and a cell's feature is the
coverage-weighted mean of the map. A mask covering the whole image gives weight 1 everywhere, i.e.
exactly the global average: the image-level answer is the special case. All cells of an image come
from the one forward pass the image needs.

Other networks (``crop_probabilities``) have no such head: each cell is cut out in a window of the
network's input size centred on it (pixels outside the cell set to the field's background level)
and predicted on its own. Their "embedding" is then the probability vector itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from protloc.errors import ProtlocError

# Block 1 sits on a grid of stride 4 (stride-2 convolution, 2x2 pooling), blocks 2 and 3 of stride 16.
BLOCK_STRIDES = (4, 16, 16)


@dataclass
class CellPredictions:
    """One image's cells: ids (the label values), embeddings [n, d] and probabilities [n, classes],
    plus the image-level embedding and probabilities from the same forward pass (GapNet-PL) or from
    the predictor's default image-level prediction (other networks)."""

    cell_ids: np.ndarray
    embeddings: np.ndarray
    probabilities: np.ndarray
    image_embedding: np.ndarray
    image_probabilities: np.ndarray
    method: str  # "masked-features" or "masked-crops"

    def with_image_prior(self) -> np.ndarray:
        """Each cell's probabilities combined with its image's: the geometric mean (the usual
        single-cell-challenge combination: the field's evidence ranks cells across images, the cell's
        own tells the cells of one field apart)."""
        return np.sqrt(self.probabilities * self.image_probabilities[None, :]).astype(np.float32)


def is_gapnet(network: torch.nn.Module) -> bool:
    return all(hasattr(network, name) for name in ("conv1", "conv8", "fc1", "head"))


def block_maps(network: torch.nn.Module, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GapNet-PL's three block feature maps of a raw batch [N, 4, H, W], normalised as the predictor does.

    The same values as ``network.blocks(normalize(raw))`` (``protloc.inference.normalize``), computed
    the way GapNet-PL's fast path does (``protloc.models.gapnet_pl_fast``, whose statistics are used
    here): the division by each channel's std folded into the first convolution's weights (zero
    padding of the centred image equals zero padding of the normalised one), channels-last
    activations, and max pooling before SELU (SELU increases strictly, so the exponential runs on a
    quarter of the values). The normalised image is never materialised.
    """
    from protloc.inference import EPSILON
    from protloc.models.gapnet_pl_fast import image_moments

    raw = raw.float()
    mean, std = image_moments(raw)
    centred = torch.empty_like(raw, memory_format=torch.channels_last)
    torch.sub(raw, mean, out=centred)
    conv1 = network.conv1
    outputs = []
    for n in range(raw.shape[0]):  # per image: each has its own std folded into the weights
        weight = (conv1.weight / (std[n].reshape(1, -1, 1, 1) + EPSILON)).contiguous(memory_format=torch.channels_last)
        outputs.append(F.conv2d(centred[n : n + 1], weight, conv1.bias, stride=2, padding=1))
    first = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    del centred
    block1 = F.selu(F.max_pool2d(first, 2, ceil_mode=True), inplace=True)
    h = F.selu(network.conv2(block1), inplace=True)
    h = F.selu(network.conv3(h), inplace=True)
    h = F.selu(network.conv4(h), inplace=True)
    block2 = F.selu(F.max_pool2d(network.conv5(h), 2, ceil_mode=True), inplace=True)
    h = F.selu(network.conv6(block2), inplace=True)
    h = F.selu(network.conv7(h), inplace=True)
    block3 = F.selu(network.conv8(h), inplace=True)
    return block1, block2, block3


def coverage(labels: np.ndarray, cell_id: int, box: tuple[slice, slice], stride: int) -> tuple[int, int, np.ndarray]:
    """The fraction of each grid cell (``stride`` px square, clipped at the image edge) that cell
    ``cell_id`` covers, over the grid cells its bounding ``box`` touches: (first grid row, first grid
    column, fractions [rows, columns]). Work is proportional to the cell's box, not the image."""
    height, width = labels.shape
    gy0, gx0 = box[0].start // stride, box[1].start // stride
    gy1, gx1 = -(-box[0].stop // stride), -(-box[1].stop // stride)
    y0, x0 = gy0 * stride, gx0 * stride
    y1, x1 = min(gy1 * stride, height), min(gx1 * stride, width)
    inside = np.zeros(((gy1 - gy0) * stride, (gx1 - gx0) * stride), dtype=np.float32)
    inside[: y1 - y0, : x1 - x0] = labels[y0:y1, x0:x1] == cell_id
    counts = inside.reshape(gy1 - gy0, stride, gx1 - gx0, stride).sum(axis=(1, 3))
    rows = np.minimum(stride, height - np.arange(gy0, gy1) * stride)
    columns = np.minimum(stride, width - np.arange(gx0, gx1) * stride)
    return gy0, gx0, counts / np.outer(rows, columns).astype(np.float32)


def masked_sums(maps: tuple[torch.Tensor, ...], labels: np.ndarray, cell_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage-weighted sums [n, sum of channels] of the maps [1, C, gh, gw] over each cell, and the
    cells' total weights [n, number of maps] (its area in grid cells on each map's grid)."""
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(labels)
    # [gh, gw, C] views: the maps are channels-last, so these are contiguous
    planes = [block[0].permute(1, 2, 0).float().numpy() for block in maps]
    for plane, stride in zip(planes, BLOCK_STRIDES):
        if plane.shape[:2] != (-(-labels.shape[0] // stride), -(-labels.shape[1] // stride)):
            raise ProtlocError(f"a {labels.shape[0]}x{labels.shape[1]} image gives a {plane.shape[0]}x"
                               f"{plane.shape[1]} map, not one of stride {stride}")
    sums = np.zeros((len(cell_ids), sum(plane.shape[2] for plane in planes)), dtype=np.float32)
    totals = np.zeros((len(cell_ids), len(planes)), dtype=np.float32)
    for row, cell_id in enumerate(cell_ids):
        box = boxes[int(cell_id) - 1]
        columns = 0
        fractions = {}
        for index, (plane, stride) in enumerate(zip(planes, BLOCK_STRIDES)):
            if stride not in fractions:
                fractions[stride] = coverage(labels, int(cell_id), box, stride)
            gy0, gx0, weights = fractions[stride]
            window = plane[gy0 : gy0 + weights.shape[0], gx0 : gx0 + weights.shape[1]]
            channels = plane.shape[2]
            sums[row, columns : columns + channels] = np.tensordot(weights, window, axes=([0, 1], [0, 1]))
            totals[row, index] = weights.sum()
            columns += channels
    return sums, totals


def _per_channel(totals: np.ndarray, maps: tuple[torch.Tensor, ...]) -> np.ndarray:
    """[..., number of maps] -> [..., sum of channels], each map's value repeated over its channels."""
    return np.repeat(totals, [block.shape[1] for block in maps], axis=-1)


def masked_averages(maps: tuple[torch.Tensor, ...], labels: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Coverage-weighted means [n, sum of channels] of the maps [1, C, gh, gw] over each cell."""
    sums, totals = masked_sums(maps, labels, cell_ids)
    return (sums / _per_channel(totals, maps)).astype(np.float32)


def background_average(maps: tuple[torch.Tensor, ...], sums: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """The maps' mean over the pixels outside every cell [1, sum of channels], from the cells' own sums:
    coverage fractions of the cells and the background add up to 1 on every grid cell, so the
    background's sum is the map's sum less the cells' (no pass over the image's pixels)."""
    everything = np.concatenate([block[0].float().sum(dim=(1, 2)).numpy() for block in maps])
    grid = np.array([block.shape[2] * block.shape[3] for block in maps], dtype=np.float64)
    weight = grid - totals.sum(axis=0, dtype=np.float64)
    return ((everything - sums.sum(axis=0, dtype=np.float64)) / _per_channel(weight, maps))[None].astype(np.float32)


def masked_features(predictor, image: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray) -> CellPredictions:
    """GapNet-PL: every cell's 224 features and probabilities from one forward pass over the image.

    The embedding is the cell's own masked average. The head, trained on fields with empty slide
    around the cells, reads each cell as a field holding only that cell: its average mixed with the
    average over the pixels outside every cell in the proportion the image has them,
    ``(1 - b) * cell + b * background`` (``b`` the background fraction; 0 for a mask covering the
    whole image, so the image-level answer stays the special case). Measured on synthetic fields
    (README "Single cells"), the mixture separates the cells of a field better than the bare average.
    """
    network = predictor.network
    if not is_gapnet(network):
        raise ProtlocError(f"{predictor.model_name} has no global-average head: use crop_probabilities")
    raw = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(predictor.device)
    background_fraction = float((labels == 0).mean())
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            maps = tuple(m.cpu() for m in block_maps(network, raw))
            image_embedding = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
            sums, totals = masked_sums(maps, labels, cell_ids)
            embeddings = (sums / _per_channel(totals, maps)).astype(np.float32)
            head_input = torch.from_numpy(embeddings)
            if background_fraction > 0 and len(cell_ids):
                background = background_average(maps, sums, totals)
                head_input = (1.0 - background_fraction) * head_input + background_fraction * torch.from_numpy(background)
            features = torch.cat([image_embedding, head_input]).to(predictor.device)
            probabilities = torch.sigmoid(network.head(features)).cpu().numpy().astype(np.float32)
    finally:
        network.train(was_training)
    return CellPredictions(
        cell_ids=cell_ids, embeddings=embeddings, probabilities=probabilities[1:],
        image_embedding=image_embedding[0].numpy(), image_probabilities=probabilities[0], method="masked-features",
    )


def background_level(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-channel median of the pixels outside every cell (the 1st percentile when there are none)."""
    outside = labels[::2, ::2] == 0
    planes = image[:, ::2, ::2]
    if outside.any():
        return np.median(planes[:, outside], axis=1).astype(np.float32)
    return np.percentile(planes.reshape(len(planes), -1), 1.0, axis=1).astype(np.float32)


def cell_crop(image: np.ndarray, labels: np.ndarray, cell_id: int, size: int,
              fill: np.ndarray | None = None) -> np.ndarray:
    """A ``size`` x ``size`` window centred on the cell at the image's own scale, every pixel outside
    the cell (and beyond the image edge) set to ``fill`` (per channel; default the background level,
    so the window looks like a lone cell on empty slide). A cell larger than the window is cut on its
    square bounding box and shrunk to fit (bilinear), as a fixed-size network cannot take it whole."""
    fill = background_level(image, labels) if fill is None else fill
    ys, xs = np.nonzero(labels == cell_id)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0, size)
    top, left = (y0 + y1) // 2 - side // 2, (x0 + x1) // 2 - side // 2
    crop = np.empty((image.shape[0], side, side), dtype=np.float32)
    crop[:] = np.asarray(fill, np.float32)[:, None, None]
    sy0, sy1 = max(top, 0), min(top + side, image.shape[1])
    sx0, sx1 = max(left, 0), min(left + side, image.shape[2])
    inside = labels[sy0:sy1, sx0:sx1] == cell_id
    window = crop[:, sy0 - top : sy1 - top, sx0 - left : sx1 - left]
    window[:, inside] = image[:, sy0:sy1, sx0:sx1][:, inside]
    if side == size:
        return crop
    tensor = torch.from_numpy(crop)[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def crop_probabilities(predictor, image: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray) -> CellPredictions:
    """Networks without a global-average head: each masked cell window through the network on its own
    (the window is the network's input size, so each cell is one patch)."""
    size = int(predictor.patch_size)
    fill = background_level(image, labels)
    probabilities = np.stack(
        [predictor.predict_proba(cell_crop(image, labels, int(i), size, fill)) for i in cell_ids]
    ) if len(cell_ids) else np.zeros((0, len(predictor.classes)), np.float32)
    image_probabilities = predictor.predict_proba(image)
    return CellPredictions(
        cell_ids=cell_ids, embeddings=probabilities.astype(np.float32), probabilities=probabilities.astype(np.float32),
        image_embedding=image_probabilities, image_probabilities=image_probabilities, method="masked-crops",
    )


def predict_cells(predictor, image: np.ndarray, labels: np.ndarray) -> CellPredictions:
    """Per-cell predictions for the cells of a label image (ids as they are; gaps in ids allowed)."""
    if labels.shape != image.shape[1:]:
        raise ProtlocError(
            f"cell mask is {labels.shape[0]}x{labels.shape[1]} but the image is {image.shape[1]}x{image.shape[2]}"
        )
    cell_ids = np.unique(labels)
    cell_ids = cell_ids[cell_ids > 0].astype(np.int64)
    if is_gapnet(predictor.network):
        return masked_features(predictor, image, labels, cell_ids)
    return crop_probabilities(predictor, image, labels, cell_ids)
