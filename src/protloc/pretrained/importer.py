"""Import the authors' GapNet-PL TensorBundle checkpoint as a protloc model file.

Every checkpoint variable is mapped onto ``gapnet-pl`` through ``CHECKPOINT_VARIABLES``:
convolution kernels are stored [height, width, in, out] (HWIO) and become torch's [out, in, height,
width] (OIHW); dense weights are stored [in, out] (y = x·W + b) and become torch's [out, in]; biases
are unchanged. The first convolution's input channels are reordered from the checkpoint's order
(``CHECKPOINT_CHANNEL_ORDER``) into protloc's canonical order (nucleus, microtubules, ER, protein), so
the imported network takes canonical input like every other protloc network.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from protloc.data.channels import AUTHORS_CHANNEL_ORDER, CHANNELS
# The weights were trained on the Cyto Challenge 2017 fields at their original resolution (paper,
# section 2: "samples were not resized"): HPA confocal fields, about 0.08 µm per pixel.
from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM, HPA_CONFOCAL_SOURCE
from protloc.errors import ProtlocError
from protloc.pretrained.tensorbundle import TensorBundle, read_tensor_bundle

MODEL_NAME = "gapnet-pl"
LABEL_SET = "hpa13"
CROP_SIZE = 1024
REPOSITORY = "https://github.com/ml-jku/gapnet-pl"
COMMIT = "6010347c7c1573fc814e8632a98359b62f048af1"
LICENSE = "BSD-2-Clause"
GLOBAL_STEP_VARIABLE = "TeLL/tell_global_step"

# The published release (PROVENANCE.md): file name -> (bytes, sha256).
PUBLISHED_FILES: dict[str, tuple[int, str]] = {
    "gapnet-pl.ckpt.data-00000-of-00001": (
        2504892, "8b09c5b3e3a2bfc6c81841701aa329c89f1cb85edd1400fa576fb16d0f1a45ab"),
    "gapnet-pl.ckpt.index": (
        968, "8abd2697748cc1b83b54227dc780e68b7680b00516a3c8cc34140b016f3d604d"),
}

# The order of the four input channels in the authors' checkpoint: an inference, see AUTHORS_CHANNEL_ORDER.
CHECKPOINT_CHANNEL_ORDER: tuple[str, ...] = AUTHORS_CHANNEL_ORDER
CHANNEL_ORDER_REASON = (
    "inferred, not stated by the authors: HPA colour files read in alphabetical order of colour "
    "(blue=nucleus, green=protein, red=microtubules, yellow=ER); the first convolution's per-input "
    "L2 norms (4.42, 9.42, 5.25, 5.37) single out input 2 as the protein channel"
)


def canonical_from_checkpoint_order(checkpoint_order=CHECKPOINT_CHANNEL_ORDER) -> list[int]:
    """For each canonical channel, its index in the checkpoint's input order."""
    if sorted(checkpoint_order) != sorted(CHANNELS):
        raise ProtlocError(f"checkpoint channel order {list(checkpoint_order)} is not a permutation of {list(CHANNELS)}")
    return [list(checkpoint_order).index(channel) for channel in CHANNELS]


def first_conv_channel_norms(bundle: TensorBundle) -> np.ndarray:
    """L2 norm of the first convolution's kernel per input channel, in the checkpoint's order."""
    kernel = bundle.read("ConvLayer-1/W_conv").astype(np.float64)
    return np.sqrt((kernel**2).sum(axis=(0, 1, 3)))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "HWIO":
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))  # -> OIHW
    if layout == "IO":
        return np.ascontiguousarray(array.T)  # -> [out, in]
    if layout == "O":
        return array
    raise ValueError(f"unknown checkpoint layout {layout!r}")


def checkpoint_state_dict(bundle: TensorBundle, checkpoint_order=CHECKPOINT_CHANNEL_ORDER) -> dict:
    """The checkpoint's variables as a ``gapnet-pl`` state dict (torch tensors, canonical channel order)."""
    import torch

    from protloc.models.gapnet_pl import CHECKPOINT_VARIABLES

    expected = {variable for variable, _ in CHECKPOINT_VARIABLES.values()} | {GLOBAL_STEP_VARIABLE}
    missing = sorted({variable for variable, _ in CHECKPOINT_VARIABLES.values()} - set(bundle.entries))
    if missing:
        raise ProtlocError(f"checkpoint {bundle.prefix} is not GapNet-PL: it lacks {', '.join(missing[:4])}"
                           + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    unexpected = sorted(set(bundle.entries) - expected)
    if unexpected:
        raise ProtlocError(f"checkpoint {bundle.prefix} has variables GapNet-PL does not: {', '.join(unexpected[:4])}")

    permutation = canonical_from_checkpoint_order(checkpoint_order)
    state = {}
    for parameter, (variable, layout) in CHECKPOINT_VARIABLES.items():
        array = bundle.read(variable)
        if array.dtype != np.float32:
            raise ProtlocError(f"checkpoint variable {variable} is {array.dtype}, expected float32")
        array = _to_torch_layout(array, layout)
        if parameter == "conv1.weight":
            array = np.ascontiguousarray(array[:, permutation])
        state[parameter] = torch.from_numpy(array.copy())
    return state


def training_step(bundle: TensorBundle) -> int | None:
    if GLOBAL_STEP_VARIABLE not in bundle:
        return None
    return int(bundle.read(GLOBAL_STEP_VARIABLE))


def import_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    checkpoint_order=CHECKPOINT_CHANNEL_ORDER,
) -> dict:
    """Read a GapNet-PL TensorBundle checkpoint and write it as a protloc model file at ``out``.

    Returns a summary (output path, parameter count, training step, whether the inputs are the
    published release, seconds taken). ``ProtlocError`` for a missing, truncated or corrupt checkpoint.
    """
    from protloc.version import __version__ as protloc_version
    from protloc.model_file import save_model_file
    from protloc.labels import load_label_set
    from protloc.models import create_model

    started = time.perf_counter()
    bundle = read_tensor_bundle(checkpoint)
    state = checkpoint_state_dict(bundle, checkpoint_order)
    label_set = load_label_set(LABEL_SET)
    num_classes = state["fc3.weight"].shape[0]
    if num_classes != len(label_set):
        raise ProtlocError(f"checkpoint has {num_classes} outputs, the {LABEL_SET} label set {len(label_set)}")
    network = create_model(MODEL_NAME, num_classes=num_classes, in_channels=len(CHANNELS))
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ProtlocError(f"checkpoint {bundle.prefix} does not fit {MODEL_NAME}: {str(exc).splitlines()[0]}") from None

    files = {}
    for path in [bundle.index_path, *bundle.data_paths]:
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    published = {name: {"bytes": size, "sha256": digest} for name, (size, digest) in PUBLISHED_FILES.items()}
    is_published_release = files == published
    step = training_step(bundle)
    source = {
        "kind": "imported-tensorflow-checkpoint",
        "description": "GapNet-PL weights published by the authors of Rumetshofer et al., ICLR 2019",
        "repository": REPOSITORY if is_published_release else None,
        "commit": COMMIT if is_published_release else None,
        "license": LICENSE if is_published_release else None,
        "published_release": is_published_release,
        "checkpoint_prefix": bundle.prefix.name,
        "files": files,
        "checkpoint_channel_order": list(checkpoint_order),
        "checkpoint_channel_order_reason": CHANNEL_ORDER_REASON,
        "first_conv_input_l2_norms": [round(float(v), 4) for v in first_conv_channel_norms(bundle)],
        "training_step": step,
        "imported_by": f"protloc {protloc_version}",
    }
    save_model_file(
        out, network, model_name=MODEL_NAME, classes=label_set.classes, label_set=label_set.name,
        crop_size=CROP_SIZE, source=source, pixel_size_um=HPA_CONFOCAL_PIXEL_SIZE_UM,
        pixel_size_source=HPA_CONFOCAL_SOURCE,
    )
    return {
        "out": Path(out),
        "parameters": sum(int(t.numel()) for t in state.values()),
        "training_step": step,
        "published_release": is_published_release,
        "seconds": time.perf_counter() - started,
    }
