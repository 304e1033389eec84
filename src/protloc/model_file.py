"""The protloc model file (not a Lightning or TensorFlow checkpoint): the network's weights with
everything needed to use them.

A model file is a ``torch.save`` dict with ``format == "protloc-model/1"``:

- ``model``: registry name (``gapnet-pl``, ...), ``model_options``: kwargs for ``create_model``
- ``state_dict``: the network's weights (canonical channel order nucleus, microtubules, ER, protein)
- ``classes``: class names in output order, ``label_set``: its name
- ``channels``: the input channel order (always ``CHANNELS``)
- ``normalization``: how inputs are normalised (``{"kind": "per-channel-zscore", "eps": 1e-7}``)
- ``crop_size``: the training crop size (default patch size at prediction)
- ``thresholds``: optional per-class decision thresholds (else 0.5)
- ``pixel_size_um``: µm per pixel of the images the network was trained at (None: not known), and
  ``pixel_size_source``: where that figure comes from; inputs are rescaled to it before prediction
- ``source``: free-form provenance (training run, imported checkpoint with sha256 of its inputs, ...)

Files are written atomically (temporary file, fsync, rename) so a crash never leaves a corrupt one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.files import atomic_write
from protloc.inference.normalization import NORMALIZATION

FORMAT = "protloc-model/1"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_model_file(
    path: str | Path,
    network: torch.nn.Module,
    *,
    model_name: str,
    classes: list[str] | tuple[str, ...],
    label_set: str,
    model_options: dict | None = None,
    crop_size: int | None = None,
    thresholds: list[float] | None = None,
    source: dict | None = None,
    pixel_size_um: float | None = None,
    pixel_size_source: str | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "model": model_name,
        "model_options": dict(model_options or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()},
        "classes": list(classes),
        "label_set": label_set,
        "channels": list(CHANNELS),
        "normalization": dict(NORMALIZATION),
        "crop_size": crop_size,
        "thresholds": list(thresholds) if thresholds is not None else None,
        "source": dict(source or {}),
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
        "pixel_size_source": pixel_size_source,
    }
    atomic_torch_save(payload, path)


def model_pixel_size(payload: dict) -> tuple[float | None, str]:
    """(µm per pixel the network was trained at, where that comes from); (None, "unknown") if not recorded.

    Model files imported from the published GapNet-PL release before the field existed get the
    release's pixel size (they are the same weights).
    """
    value = payload.get("pixel_size_um")
    if value is not None:
        return float(value), str(payload.get("pixel_size_source") or "model file")
    source = payload.get("source") or {}
    if source.get("kind") == "imported-tensorflow-checkpoint" and source.get("published_release"):
        from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM, HPA_CONFOCAL_SOURCE

        return HPA_CONFOCAL_PIXEL_SIZE_UM, HPA_CONFOCAL_SOURCE
    return None, "unknown"


def read_model_file(path: str | Path) -> dict:
    """Load and validate a protloc model file; ProtlocError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ProtlocError(f"cannot read model file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ProtlocError(f"{path} is not a protloc model file (format {FORMAT})")
    check_inputs(payload, path)
    return payload


def check_inputs(payload: dict, path: str | Path) -> None:
    """Refuse a model whose stored input channels or normalisation differ from what protloc feeds."""
    channels = payload.get("channels")
    if list(channels or []) != list(CHANNELS):
        raise ProtlocError(
            f"{path}: the model takes channels {channels} but protloc feeds {list(CHANNELS)}; "
            "it cannot be used as it is"
        )
    normalization = payload.get("normalization")
    if normalization != NORMALIZATION:
        raise ProtlocError(
            f"{path}: the model expects input normalisation {normalization} but protloc feeds {NORMALIZATION}; "
            "it cannot be used as it is"
        )


def network_from_model_file(payload: dict) -> torch.nn.Module:
    """The network described by a model file, with its weights loaded, in eval mode."""
    from protloc.models import create_model

    network = create_model(
        payload["model"], num_classes=len(payload["classes"]), in_channels=len(payload["channels"]),
        **payload.get("model_options", {}),
    )
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ProtlocError(f"model file weights do not fit {payload['model']}: {str(exc).splitlines()[0]}") from None
    return network.eval()
