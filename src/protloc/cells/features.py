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

``predict_cells`` brings the image to the model's pixel size through the predictor's one
``Inferer`` (the labels follow onto that grid) and adds each cell's expression (its protein signal
relative to the field's strongest cell, ``protloc.cells.scoring``), read on the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.inference.gapnet_pl_fast import maps_and_averages

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
    # each cell's protein signal relative to the field's strongest cell (protloc.cells.scoring)
    expression: np.ndarray | None = None
    # each cell's protein signal above the background in units of the background's noise (absolute)
    signal_to_noise: np.ndarray | None = None
    scale: float = 1.0  # the input was resized by this factor to the model's pixel size
    boxes: list | None = None  # the cells' bounding boxes on the input's grid (``cell_boxes``)

    def with_image_prior(self) -> np.ndarray:
        """Each cell's probabilities combined with its image's: the geometric mean (the usual
        single-cell-challenge combination: the field's evidence ranks cells across images, the cell's
        own tells the cells of one field apart)."""
        return np.sqrt(self.probabilities * self.image_probabilities[None, :]).astype(np.float32)

    def scores(self, classes, scoring: str | None = None) -> np.ndarray:
        """The per-cell answers [n, classes] by ``scoring`` (``protloc.cells.scoring``; default
        ``DEFAULT_SCORING``)."""
        from protloc.cells.scoring import DEFAULT_SCORING, cell_scores

        return cell_scores(self, classes, scoring or DEFAULT_SCORING)


def is_gapnet(network: torch.nn.Module) -> bool:
    return all(hasattr(network, name) for name in ("conv1", "conv8", "fc1", "head"))


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


def coverages(labels: np.ndarray, cell_id: int, box: tuple[slice, slice]) -> dict[int, tuple[int, int, np.ndarray]]:
    """``coverage`` on the grids of both strides (4 and 16) from one pass over the cell's box: the
    pixel mask is taken over the box widened to the 16-px grid, counted per 4-px grid cell, and
    those counts are added up per 16-px grid cell."""
    height, width = labels.shape
    big = max(BLOCK_STRIDES)
    y0, x0 = box[0].start // big * big, box[1].start // big * big
    y1, x1 = -(-box[0].stop // big) * big, -(-box[1].stop // big) * big
    inside = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    inside[: min(y1, height) - y0, : min(x1, width) - x0] = labels[y0:y1, x0:x1] == cell_id
    result = {}
    counts = inside
    done = 1
    for stride in sorted(set(BLOCK_STRIDES)):
        factor = stride // done
        rows, columns = counts.shape
        # rows first, then columns: two reductions over contiguous runs (faster than one over (1, 3))
        counts = counts.reshape(rows // factor, factor, columns).sum(axis=1)
        counts = counts.reshape(rows // factor, columns // factor, factor).sum(axis=2)
        done = stride
        gy0, gx0 = y0 // stride, x0 // stride
        # only grid cells inside the image (the widened box may reach past its edge)
        rows = min(counts.shape[0], -(-height // stride) - gy0)
        columns = min(counts.shape[1], -(-width // stride) - gx0)
        heights = np.minimum(stride, height - np.arange(gy0, gy0 + rows) * stride)
        widths = np.minimum(stride, width - np.arange(gx0, gx0 + columns) * stride)
        result[stride] = (gy0, gx0, counts[:rows, :columns] / np.outer(heights, widths).astype(np.float32))
    return result


def _huge_ids(labels: np.ndarray) -> bool:
    """Ids far above the number of pixels (sparse ids up to 2^31): per-id tables would not fit."""
    return int(labels.max(initial=0)) > 4 * labels.size + 65536


def label_ids(labels: np.ndarray) -> np.ndarray:
    """The positive ids of a label image, ascending."""
    if _huge_ids(labels):
        ids = np.unique(labels)
        return ids[ids > 0].astype(np.int64)
    return np.flatnonzero(np.bincount(labels.ravel())[1:]) + 1


def cell_boxes(labels: np.ndarray):
    """(ids, boxes) of a label image: its positive ids ascending, and their bounding boxes indexed
    ``boxes[id - 1]``, from one pass (``scipy.ndimage.find_objects``; through compact ids when the
    ids are huge)."""
    from scipy import ndimage as ndi

    if _huge_ids(labels):
        ids, compact = np.unique(labels, return_inverse=True)
        found = ndi.find_objects(compact.reshape(labels.shape).astype(np.int32) + (0 if ids[0] == 0 else 1))
        ids = ids[ids > 0]
        return ids.astype(np.int64), {int(i) - 1: found[k] for k, i in enumerate(ids)}
    boxes = ndi.find_objects(labels)
    ids = np.array([i + 1 for i, box in enumerate(boxes) if box is not None], dtype=np.int64)
    return ids, boxes


def masked_sums(maps: tuple[torch.Tensor, ...], labels: np.ndarray, cell_ids: np.ndarray,
                boxes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coverage-weighted sums [n, sum of channels] of the maps [1, C, gh, gw] over each cell, and the
    cells' total weights [n, number of maps] (its area in grid cells on each map's grid).
    ``boxes``: not needed any more (accepted for the callers that pass ``cell_boxes``' answer)."""
    # [gh, gw, C] views: the maps are channels-last, so these are contiguous
    planes = [block[0].permute(1, 2, 0).float().numpy() for block in maps]
    for plane, stride in zip(planes, BLOCK_STRIDES):
        if plane.shape[:2] != (-(-labels.shape[0] // stride), -(-labels.shape[1] // stride)):
            raise ProtlocError(f"a {labels.shape[0]}x{labels.shape[1]} image gives a {plane.shape[0]}x"
                               f"{plane.shape[1]} map, not one of stride {stride}")
    sums = np.zeros((len(cell_ids), sum(plane.shape[2] for plane in planes)), dtype=np.float32)
    totals = np.zeros((len(cell_ids), len(planes)), dtype=np.float32)
    if not len(cell_ids):
        return sums, totals
    # One sparse coverage matrix per grid (a loop over the cells took minutes for a mask of 65,535).
    from protloc.cells.pixels import coverage_matrix

    matrices = {stride: coverage_matrix(labels, cell_ids, stride) for stride in sorted(set(BLOCK_STRIDES))}
    columns = 0
    for index, (plane, stride) in enumerate(zip(planes, BLOCK_STRIDES)):
        matrix, channels = matrices[stride], plane.shape[2]
        sums[:, columns : columns + channels] = matrix @ np.ascontiguousarray(plane).reshape(-1, channels)
        totals[:, index] = np.asarray(matrix.sum(axis=1)).reshape(-1)
        columns += channels
    return sums, totals


def _per_channel(totals: np.ndarray, maps: tuple[torch.Tensor, ...]) -> np.ndarray:
    """[..., number of maps] -> [..., sum of channels], each map's value repeated over its channels."""
    return np.repeat(totals, [block.shape[1] for block in maps], axis=-1)


def masked_averages(maps: tuple[torch.Tensor, ...], labels: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Coverage-weighted means [n, sum of channels] of the maps [1, C, gh, gw] over each cell."""
    sums, totals = masked_sums(maps, labels, cell_ids)
    return (sums / _per_channel(totals, maps)).astype(np.float32)


def background_average(maps: tuple[torch.Tensor, ...], sums: np.ndarray, totals: np.ndarray,
                       averages: np.ndarray | None = None) -> np.ndarray:
    """The maps' mean over the pixels outside every cell [1, sum of channels], from the cells' own sums:
    coverage fractions of the cells and the background add up to 1 on every grid cell, so the
    background's sum is the map's sum less the cells' (no pass over the image's pixels).
    ``averages``: the maps' global averages [sum of channels] when known (the pass computes them)."""
    grid = np.array([block.shape[2] * block.shape[3] for block in maps], dtype=np.float64)
    if averages is None:
        everything = np.concatenate([block[0].float().sum(dim=(1, 2)).numpy() for block in maps]).astype(np.float64)
    else:
        everything = np.asarray(averages, np.float64).reshape(-1) * _per_channel(grid, maps)
    weight = grid - totals.sum(axis=0, dtype=np.float64)
    return ((everything - sums.sum(axis=0, dtype=np.float64)) / _per_channel(weight, maps))[None].astype(np.float32)


@dataclass
class ImagePass:
    """GapNet-PL's one forward pass over an image at the model's pixel size, made before its cells are
    known (so the segmentation can run beside it): the block maps and their global averages. Block 1
    is the fast path's per-thread workspace: use the pass on the thread that made it, before its next."""

    model_image: np.ndarray
    scale: float
    maps: tuple[torch.Tensor, ...]
    image_embedding: torch.Tensor


def image_pass(predictor, image: np.ndarray, pixel_size_um: float | None = None) -> ImagePass:
    """The forward pass ``predict_cells`` needs, on its own (GapNet-PL models only)."""
    if not is_gapnet(predictor.network):
        raise ProtlocError(f"{predictor.model_name} has no global-average head: its cells need their own crops")
    inferer = predictor.inferer()
    model_image = inferer.model_input(image, pixel_size_um)
    network = predictor.network
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            maps, image_embedding = _model_input_maps(predictor, model_image)
    finally:
        network.train(was_training)
    return ImagePass(model_image, inferer.scale(pixel_size_um), maps, image_embedding)


def _model_input_maps(predictor, model_image: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """GapNet-PL's block maps and global averages of one model input [C, H, W], on the CPU (the
    caller holds eval mode and ``no_grad``)."""
    raw = torch.from_numpy(np.ascontiguousarray(model_image, dtype=np.float32))[None].to(predictor.device)
    # the predictor's precision, resolved for maps (``Predictor.maps_options``); cells average float32
    maps, image_embedding = maps_and_averages(predictor.network, raw, **getattr(predictor, "maps_options", dict)())
    return tuple(m.float().cpu() for m in maps), image_embedding.cpu()


def masked_features(predictor, image: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray,
                    boxes: list | None = None, made: ImagePass | None = None) -> CellPredictions:
    """GapNet-PL: every cell's 224 features and probabilities from one forward pass over the image.

    The embedding is the cell's own masked average. The head, trained on fields with empty slide
    around the cells, reads each cell as a field holding only that cell: its average mixed with the
    average over the pixels outside every cell in the proportion the image has them,
    ``(1 - b) * cell + b * background`` (``b`` the background fraction; 0 for a mask covering the
    whole image, so the image-level answer stays the special case). Measured on synthetic fields
    (README "Single cells"), the mixture separates the cells of a field better than the bare average.
    ``made``: the image's forward pass, when it was made before (``image_pass``).
    """
    network = predictor.network
    if not is_gapnet(network):
        raise ProtlocError(f"{predictor.model_name} has no global-average head: use crop_probabilities")
    background_fraction = float((labels == 0).mean())
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            maps, image_embedding = ((made.maps, made.image_embedding) if made is not None
                                     else _model_input_maps(predictor, image))
            sums, totals = masked_sums(maps, labels, cell_ids, boxes)
            embeddings = (sums / _per_channel(totals, maps)).astype(np.float32)
            head_input = torch.from_numpy(embeddings)
            if background_fraction > 0 and len(cell_ids):
                background = background_average(maps, sums, totals, image_embedding[0].numpy())
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


def labels_on_grid(labels: np.ndarray, shape: tuple[int, int], cell_ids: np.ndarray) -> np.ndarray:
    """A label image carried to another pixel grid of the same field (nearest neighbour, pixel
    centres mapped onto pixel centres). A cell too small to keep a pixel there keeps the one under
    its centroid, so every cell still gets an answer."""
    height, width = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    columns = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    resized = labels[rows[:, None], columns[None, :]]
    missing = np.setdiff1d(cell_ids, np.unique(resized))
    if len(missing):
        from scipy import ndimage as ndi

        centres = ndi.center_of_mass(np.ones_like(labels), labels, missing)
        for cell_id, (y, x) in zip(missing, centres):
            ty = min(int((y + 0.5) * shape[0] / height), shape[0] - 1)
            tx = min(int((x + 0.5) * shape[1] / width), shape[1] - 1)
            resized[ty, tx] = cell_id
    return resized


def predict_cells(predictor, image: np.ndarray, labels: np.ndarray, *,
                  pixel_size_um: float | None = None, made: ImagePass | None = None) -> CellPredictions:
    """Per-cell predictions for the cells of a label image (ids as they are; gaps in ids allowed).

    ``pixel_size_um``: the image's µm per pixel. The predictor's one ``Inferer`` brings the image
    to the model's pixel size (``Inferer.model_input``) and the labels follow it onto that grid
    (``labels_on_grid``); the cells' expression is read on the input's own grid. ``made``: GapNet-PL's
    forward pass over this image with this pixel size, made before (``image_pass``).
    """
    from protloc.cells.scoring import PROTEIN_CHANNEL, expression_of, protein_signal

    if labels.shape != image.shape[1:]:
        raise ProtlocError(
            f"cell mask is {labels.shape[0]}x{labels.shape[1]} but the image is {image.shape[1]}x{image.shape[2]}"
        )
    cell_ids, boxes = cell_boxes(labels)
    if made is not None:
        scale, model_image = made.scale, made.model_image
    else:
        inferer = predictor.inferer()
        scale = inferer.scale(pixel_size_um)
        model_image = inferer.model_input(image, pixel_size_um)
    model_labels = labels if scale == 1.0 else labels_on_grid(labels, model_image.shape[1:], cell_ids)
    if is_gapnet(predictor.network):
        result = masked_features(predictor, model_image, model_labels, cell_ids, boxes if scale == 1.0 else None,
                                 made)
    else:
        result = crop_probabilities(predictor, model_image, model_labels, cell_ids)
    signal, _, noise = protein_signal(image[PROTEIN_CHANNEL], labels, cell_ids, boxes)
    result.expression = expression_of(signal)
    result.signal_to_noise = (signal / noise).astype(np.float32)
    result.boxes = boxes
    result.scale = scale
    return result
