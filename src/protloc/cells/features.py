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

    The same values as ``network.blocks(normalize(raw))``, computed the way inference is fast
    on a CPU: channels-last activations, and max pooling before SELU (SELU increases strictly, so
    ``max_pool(selu(x)) == selu(max_pool(x))`` and the exponential runs on a quarter of the values).
    """
    from protloc.inference import normalize

    x = normalize(raw).contiguous(memory_format=torch.channels_last)
    block1 = F.selu(F.max_pool2d(network.conv1(x), 2, ceil_mode=True), inplace=True)
    h = F.selu(network.conv2(block1), inplace=True)
    h = F.selu(network.conv3(h), inplace=True)
    h = F.selu(network.conv4(h), inplace=True)
    block2 = F.selu(F.max_pool2d(network.conv5(h), 2, ceil_mode=True), inplace=True)
    h = F.selu(network.conv6(block2), inplace=True)
    h = F.selu(network.conv7(h), inplace=True)
    block3 = F.selu(network.conv8(h), inplace=True)
    return block1, block2, block3


def coverage(labels: np.ndarray, cell_ids: np.ndarray, stride: int, grid: tuple[int, int]):
    """Sparse [len(cell_ids), gh * gw] matrix: the fraction of each grid cell (``stride`` px square,
    clipped at the image edge) that each cell covers."""
    from scipy import sparse

    height, width = labels.shape
    gh, gw = grid
    if (gh, gw) != (-(-height // stride), -(-width // stride)):
        raise ProtlocError(f"a {height}x{width} image gives a {gh}x{gw} map, not stride {stride}")
    row_of = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    row_of[cell_ids] = np.arange(len(cell_ids))
    ys, xs = np.nonzero(labels)
    rows = row_of[labels[ys, xs]]
    keep = rows >= 0
    ys, xs, rows = ys[keep], xs[keep], rows[keep]
    columns = (ys // stride) * gw + (xs // stride)
    counts = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(cell_ids), gh * gw))
    # pixels of each grid cell inside the image (the last row/column of grid cells may be cut)
    cell_rows = np.minimum(stride, height - np.arange(gh) * stride)
    cell_cols = np.minimum(stride, width - np.arange(gw) * stride)
    area = np.outer(cell_rows, cell_cols).astype(np.float32).ravel()
    return counts @ sparse.diags(1.0 / area)


def masked_averages(maps: tuple[torch.Tensor, ...], labels: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Coverage-weighted means [n, sum of channels] of the maps [1, C, gh, gw] over each cell."""
    parts = []
    for block, stride in zip(maps, BLOCK_STRIDES):
        channels, gh, gw = block.shape[1:]
        weights = coverage(labels, cell_ids, stride, (gh, gw))
        flat = block[0].permute(1, 2, 0).reshape(gh * gw, channels).float().numpy()
        totals = np.asarray(weights.sum(axis=1)).ravel()
        parts.append((weights @ flat) / totals[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32)


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
            embeddings = masked_averages(maps, labels, cell_ids) if len(cell_ids) else np.zeros((0, 224), np.float32)
            head_input = torch.from_numpy(embeddings)
            if background_fraction > 0 and len(cell_ids):
                background = masked_averages(maps, (labels == 0).astype(np.int32), np.array([1]))
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
