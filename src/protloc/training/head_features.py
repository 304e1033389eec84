"""A new head on a frozen encoder, trained on precomputed encoder features.

With the encoder frozen, its output for a given input never changes, so it is computed once: for
each image (rescaled to the model's pixel size) and each of the covering patches that prediction
uses (``protloc.data.patches.extract_patches`` at the model's crop size), the input of the head's
first dense layer (GapNet-PL: the 224 global averages). The head (every ``nn.Linear``; the output
layer replaced when the label set differs) is then trained on those patch features with the image's
labels, with the protocol's loss (the model's summed BCE + L1/L2 penalty), SGD momentum 0.9 and
the head learning rate; the epoch with the best validation mean F1 at 0.5 is kept and thresholds
are tuned on its validation predictions. An image's probabilities are the mean of its patches'
sigmoids, exactly what the default patch prediction of the resulting model file gives.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from protloc.errors import ProtlocError


@torch.no_grad()
def patch_features(network: nn.Module, image: np.ndarray, patch_size: int, scale: float = 1.0) -> np.ndarray:
    """[patches, features]: the head's input for each covering patch of one raw image.

    The image goes through the one inferer's ``model_input`` (rescaled by ``scale`` to the model's
    pixel size) and ``patches``, each patch through the one normaliser: what prediction does.
    """
    from protloc.inference.inferer import Inferer
    from protloc.inference.normalization import normalize
    from protloc.training.transfer import head_modules

    inferer = Inferer(network, patch_size, model_pixel_size_um=1.0, pixel_size_um=scale)
    first = head_modules(network)[0][1]
    captured: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach().clone()))
    try:
        network.eval()
        for patch in inferer.patches(inferer.model_input(image)):
            network(normalize(torch.from_numpy(np.ascontiguousarray(patch))[None]))
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float32)


def compute_features(network, index, ids, patch_size: int, scale: float, progress: bool = True) -> dict:
    """{id: [patches, features]} for the given samples."""
    from tqdm.auto import tqdm

    features = {}
    for sample_id in tqdm(ids, desc="encoder features", unit="image", disable=not progress, leave=False):
        features[sample_id] = patch_features(network, index.load_image(sample_id), patch_size, scale)
    return features


def _head_forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network.head(x)


def check_separable(network: nn.Module) -> None:
    """Precomputed features need a network whose dense head is a method of its own (GapNet-PL)."""
    if not callable(getattr(network, "head", None)):
        raise ProtlocError(f"{getattr(network, 'name', type(network).__name__)} has no separate head to train on "
                           "precomputed features; use `protloc train --freeze-encoder` per fold instead")


def image_probs(network: nn.Module, features: dict, ids) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        return np.stack([torch.sigmoid(_head_forward(network, torch.from_numpy(features[i]))).mean(0).numpy()
                         for i in ids]).astype(np.float64)


def train_head(network: nn.Module, config, features: dict, labels: dict, train_ids, val_ids,
               progress: bool = True) -> dict:
    """Train the head in place on patch features; returns the best epoch, its val F1 and tuned thresholds."""
    from protloc.evaluation.metrics import evaluate_predictions, tune_thresholds
    from protloc.training.lightning_module import regularization_penalty
    from protloc.training.transfer import head_parameter_names

    head_names = head_parameter_names(network)
    params = [p for n, p in network.named_parameters() if n in head_names]
    for name, p in network.named_parameters():
        p.requires_grad_(name in head_names)
    x = torch.from_numpy(np.concatenate([features[i] for i in train_ids]))
    y = torch.from_numpy(np.concatenate([np.repeat(labels[i][None], len(features[i]), 0) for i in train_ids]))
    if not len(x):
        raise ProtlocError("no training samples for the head")
    lr = config.head_lr if config.head_lr is not None else config.learning_rate
    optimizer = torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    y_val = np.stack([labels[i] for i in val_ids]).astype(np.int64)
    classes = list(range(y_val.shape[1]))
    best = {"epoch": None, "f1": -1.0, "state": None}
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start:start + config.batch_size]
            logits = _head_forward(network, x[batch])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[batch], reduction="none").sum(1).mean()
            loss = loss + regularization_penalty(network, config.l1, config.l2)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
            optimizer.step()
        probs = image_probs(network, features, val_ids)
        f1 = evaluate_predictions(y_val, probs, [str(c) for c in classes])["summary"]["f1"]["mean"] or 0.0
        if f1 > best["f1"]:
            best = {"epoch": epoch, "f1": f1, "state": {k: v.clone() for k, v in network.state_dict().items()}}
        if progress and epoch % max(1, config.epochs // 10) == 0:
            print(f"  head epoch {epoch}/{config.epochs}: loss {float(loss):.3f}, val mean F1 {f1:.3f}",
                  file=sys.stderr)
    network.load_state_dict(best["state"])
    thresholds = tune_thresholds(y_val, image_probs(network, features, val_ids))
    return {"best_epoch": best["epoch"], "best_val_mean_f1": best["f1"], "thresholds": [float(t) for t in thresholds]}
