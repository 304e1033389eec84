"""Whole-image inference shared by validation during training, evaluation and prediction.

The paper's protocol (section 3.1): the whole image is covered by evenly spaced patches of the
training crop size (``protloc.data.patches.patch_grid``), each patch is normalised per channel
exactly as a training crop is ((x - mean) / (std + 1e-7), population std), the sigmoid outputs of
the patches are averaged. ``predict_whole`` is the alternative for fully convolutional networks: one
pass over the whole normalised image.

The functions put the network in eval mode for the call and restore its previous mode afterwards;
they run under ``torch.no_grad`` and inherit any autocast context of the caller (Lightning's
bf16-mixed validation).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from protloc.errors import ProtlocError

EPS = 1e-7


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel z-score of [N, C, H, W]: (x - mean) / (std + 1e-7), population std.

    The same rule as ``protloc.data.patches.normalize`` (numpy's std is the population std, so
    ``correction=0`` here; torch's default would be the sample std).
    """
    x = x.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) / (std + EPS)


def _resolve_device(network: torch.nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(network.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def _eval_mode(network: torch.nn.Module) -> Iterator[None]:
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ProtlocError(f"expected an image [channels, height, width], got shape {list(image.shape)}")
    return image.astype(np.float32, copy=False)


def forward_probabilities(
    network: torch.nn.Module, batch: torch.Tensor, device: torch.device, precision: str | None = None
) -> torch.Tensor:
    """Sigmoid outputs of a raw batch. ``precision`` None: the plain forward (inheriting the caller's
    autocast); "fp32"/"bf16": GapNet-PL's fast path (``protloc.fast_inference``), for other networks
    the plain forward, under bf16 autocast for "bf16"."""
    batch = batch.to(device, non_blocking=True)
    if precision is not None:
        from protloc.fast_inference import check_precision, fast_network

        fast = fast_network(network, precision=check_precision(precision))
        if fast is not None:
            return torch.sigmoid(fast(batch).float())
    if device.type == "cuda":
        # Training on CUDA runs channels-last; feeding the same layout avoids a conversion per layer.
        batch = batch.contiguous(memory_format=torch.channels_last)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = network(normalize_batch(batch))
    else:
        logits = network(normalize_batch(batch))
    return torch.sigmoid(logits.float())


def predict_image(
    network: torch.nn.Module,
    image: np.ndarray,
    patch_size: int,
    batch_size: int = 8,
    device=None,
    precision: str | None = None,
) -> np.ndarray:
    """Class probabilities [num_classes] of one raw image [C, H, W]: mean of its patches' sigmoids.

    ``precision`` (None, "fp32", "bf16"): see ``forward_probabilities``.
    """
    from protloc.data.patches import extract_patches

    image = _check_image(image)
    if patch_size <= 0:
        raise ProtlocError(f"patch size must be positive, got {patch_size}")
    device = _resolve_device(network, device)
    patches = torch.from_numpy(np.ascontiguousarray(extract_patches(image, patch_size)))
    outputs = []
    with _eval_mode(network), torch.no_grad():
        for start in range(0, patches.shape[0], max(1, batch_size)):
            outputs.append(forward_probabilities(network, patches[start : start + batch_size], device, precision))
    return torch.cat(outputs).mean(dim=0).cpu().numpy().astype(np.float32)


def predict_whole(
    network: torch.nn.Module, image: np.ndarray, device=None, precision: str | None = None
) -> np.ndarray:
    """Class probabilities [num_classes] from one pass over the whole normalised image.

    Only for fully convolutional networks (global pooling before the dense part), e.g. GapNet-PL.
    ``precision`` (None, "fp32", "bf16"): see ``forward_probabilities``.
    """
    paper = getattr(network, "paper", None)
    if paper is not None and paper.fixed_input_size:
        raise ProtlocError(f"{getattr(network, 'name', 'this model')} has fixed-size dense layers: use patches")
    image = _check_image(image)
    device = _resolve_device(network, device)
    with _eval_mode(network), torch.no_grad():
        probs = forward_probabilities(network, torch.from_numpy(np.ascontiguousarray(image))[None], device, precision)
    return probs[0].cpu().numpy().astype(np.float32)


def predict_dataset(
    network: torch.nn.Module,
    index,
    ids: Sequence[str],
    patch_size: int,
    batch_size: int = 8,
    device=None,
    *,
    whole_image: bool = False,
    load: Callable[[str], np.ndarray] | None = None,
    progress: bool = True,
    description: str = "predicting",
) -> tuple[list[str], np.ndarray]:
    """Probabilities [len(ids), num_classes] for samples of a ``DatasetIndex``, in the order of ``ids``.

    ``load`` reads one sample as float32 [4, H, W] (default ``index.load_image``; the training cache
    passes its memory-mapped reader). A tqdm bar (rate, ETA) goes to stderr when ``progress``.
    """
    from tqdm.auto import tqdm

    load = load or index.load_image
    ids = list(ids)
    results = []
    for sample_id in tqdm(ids, desc=description, unit="image", disable=not progress, leave=False):
        image = load(sample_id)
        if whole_image:
            results.append(predict_whole(network, image, device=device))
        else:
            results.append(predict_image(network, image, patch_size, batch_size=batch_size, device=device))
    num_classes = getattr(network, "num_classes", None)
    if not results:
        return ids, np.zeros((0, num_classes or 0), dtype=np.float32)
    return ids, np.stack(results).astype(np.float32)
