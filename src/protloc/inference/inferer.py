"""The one patch/whole-image inferer of protloc (as MONAI's SlidingWindowInferer or cellpose's tiling).

The paper's protocol (section 3.1): the whole image is covered by evenly spaced patches of the
training crop size (the authors' step rule, ``protloc.data.patches.patch_grid``; images smaller than
a patch are zero-padded), each patch is normalised per channel (``protloc.inference.normalization``) and
the sigmoid outputs of the patches are averaged. ``patch_size=None`` is the alternative for fully
convolutional networks: one pass over the whole image. ``tta`` averages over the eight flips and 90°
rotations. Patches of several images share forward passes (``Inferer.predict_many``: the web worker).

Everything that turns an image into model outputs goes through ``Inferer``: ``protloc predict``,
validation during training, evaluation, the expert study (``forward=`` its penultimate features), the
web worker and the sliding-window maps (``window_outputs``). Each image passes through
``Inferer.model_input`` once before it is cut: the one place where an image is brought to the model's
pixel size (``model_pixel_size_um``) from its own (``pixel_size_um``, per call or the inferer's
default), by ``protloc.data.pixel_size.rescale``; unknown either way, the image is used as it is.

The inferer puts the network in eval mode for the call and restores its previous mode afterwards;
it runs under ``torch.no_grad`` and inherits any autocast context of the caller (Lightning's
bf16-mixed validation) when ``precision`` is None. Any other ``precision`` (``auto`` included) is
resolved here, by ``protloc.inference.precision.resolve_precision``: ``Inferer.precision`` is what
runs, ``Inferer.resolved`` says why.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from protloc.errors import ProtlocError
from protloc.inference.normalization import normalize
from protloc.inference.precision import Resolved, announce, resolve_precision, warn_if_bf16_emulated

Forward = Callable[[torch.Tensor], torch.Tensor]


def dihedral_views(image: np.ndarray) -> list[np.ndarray]:
    """The eight flips and 90° rotations of an image [..., H, W]."""
    views = []
    for k in range(4):
        rotated = np.rot90(image, k, axes=(-2, -1))
        views += [np.ascontiguousarray(rotated), np.ascontiguousarray(rotated[..., ::-1])]
    return views


def sigmoid_forward(network: torch.nn.Module, precision: str | None = None, *, compile_selu: bool = False,
                    model_file=None, model_pixel_size_um: float | None = None) -> Forward:
    """Raw batch [N, C, h, w] -> sigmoid outputs [N, classes] (float32).

    ``precision`` None: the plain forward on normalised input (inheriting the caller's autocast);
    "fp32"/"bf16"/"fp16": GapNet-PL's fast path (``protloc.inference.gapnet_pl_fast``, which normalises
    itself; ``compile_selu``: its compiled SELU), other networks the plain forward, under autocast for
    bf16/fp16; "int8": GapNet-PL's quantised ONNX Runtime graph (``protloc.inference.int8``, made
    once from ``model_file`` and cached beside it). Give resolved precisions (not "auto").
    """
    fast = None
    if precision == "int8":
        from protloc.inference.int8 import int8_forward
        from protloc.models.gapnet_pl import GapNetPL

        if not isinstance(network, GapNetPL):
            raise ProtlocError(f"--precision int8 is for GapNet-PL, not {getattr(network, 'name', 'this network')}")
        logits_of = int8_forward(network, model_file, model_pixel_size_um)
        return lambda batch: torch.sigmoid(logits_of(batch)).to(batch.device)
    if precision is not None:
        from protloc.inference.gapnet_pl_fast import fast_network

        options = {"compile_selu": True} if compile_selu else {}
        fast = fast_network(network, precision=precision, **options)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "")

    def forward(batch: torch.Tensor) -> torch.Tensor:
        if fast is not None:
            return torch.sigmoid(fast(batch).float())
        if batch.device.type == "cuda":
            # Training on CUDA runs channels-last; feeding the same layout avoids a conversion per layer.
            batch = batch.contiguous(memory_format=torch.channels_last)
        if autocast is not None:
            with torch.autocast(batch.device.type, dtype=autocast):
                logits = network(normalize(batch))
        else:
            logits = network(normalize(batch))
        return torch.sigmoid(logits.float())

    return forward


def network_device(network: torch.nn.Module) -> torch.device:
    try:
        return next(network.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def eval_mode(network: torch.nn.Module) -> Iterator[None]:
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


class Inferer:
    """Model outputs of whole raw canonical images [C, H, W] of any size.

    ``patch_size``: the covering patches' size (the model's training crop), or None for one pass over
    the whole image (fully convolutional networks only). ``batch_size``: patches per forward pass.
    ``forward``: raw batch -> outputs [N, K] (default: ``sigmoid_forward(network, precision)``).
    ``on_pass(patches, images)``: called after each forward pass (the web worker's statistics).
    ``precision``: None (the caller's autocast), fp32, bf16, fp16, int8 or auto (resolved here, said
    once on stderr); ``fields``: how many fields the run holds (``math.inf``: a server), which decides
    whether GapNet-PL's SELU is compiled (``compile_selu_worth``); ``model_file``: the network's file,
    the key of int8's cached quantised graph.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        patch_size: int | None,
        *,
        batch_size: int = 8,
        tta: bool = False,
        precision: str | None = None,
        device: torch.device | str | None = None,
        forward: Forward | None = None,
        on_pass: Callable[[int, int], None] | None = None,
        model_pixel_size_um: float | None = None,
        pixel_size_um: float | None = None,
        fields: float | None = None,
        model_file=None,
    ) -> None:
        if patch_size is None:
            paper = getattr(network, "paper", None)
            if paper is not None and paper.fixed_input_size:
                raise ProtlocError(
                    f"{getattr(network, 'name', 'this model')} has fixed-size dense layers: whole-image "
                    "prediction needs patches"
                )
        elif int(patch_size) <= 0:
            raise ProtlocError(f"patch size must be positive, got {patch_size}")
        if batch_size < 1:
            raise ProtlocError(f"batch size must be at least 1, got {batch_size}")
        self.network = network
        self.patch_size = None if patch_size is None else int(patch_size)
        self.batch_size = int(batch_size)
        self.tta = tta
        self.device = torch.device(device) if device is not None else network_device(network)
        self.resolved: Resolved | None = None
        if precision is not None:
            self.resolved = resolve_precision(precision, self.device)
            announce(self.resolved)
            precision = self.resolved.precision
            warn_if_bf16_emulated(precision, self.device)
        self.precision = precision
        if forward is None:
            from protloc.inference.precision import compile_selu_worth

            forward = sigmoid_forward(network, precision, compile_selu=compile_selu_worth(fields),
                                      model_file=model_file, model_pixel_size_um=model_pixel_size_um)
        self.forward = forward
        self.on_pass = on_pass
        self.model_pixel_size_um = model_pixel_size_um
        self.pixel_size_um = pixel_size_um  # the inputs' µm per pixel when a call does not say

    # -- the images as the model sees them ----------------------------------------------------------
    def scale(self, pixel_size_um: float | None = None) -> float:
        """The resize factor from an input of this pixel size (default the inferer's) to the model's."""
        from protloc.data.pixel_size import scale_factor

        data = self.pixel_size_um if pixel_size_um is None else pixel_size_um
        return scale_factor(data, self.model_pixel_size_um)

    def model_input(self, image, pixel_size_um: float | None = None) -> np.ndarray:
        """The image as the network takes it: float32 [C, H, W] at the model's pixel size. The one
        place each image passes through before it is cut into patches."""
        from protloc.data.pixel_size import rescale

        image = np.asarray(image)
        if image.ndim != 3:
            raise ProtlocError(f"expected an image [channels, height, width], got shape {list(image.shape)}")
        return rescale(image.astype(np.float32, copy=False), self.scale(pixel_size_um))

    def patches(self, image: np.ndarray) -> np.ndarray:
        """The covering patches [N, C, patch, patch] of one model input (the whole image when
        ``patch_size`` is None)."""
        if self.patch_size is None:
            return image[None]
        from protloc.data.patches import extract_patches

        return np.ascontiguousarray(extract_patches(image, self.patch_size))

    # -- running the network ------------------------------------------------------------------------
    def _run(self, patches: np.ndarray, owners: np.ndarray) -> torch.Tensor:
        outputs = []
        with eval_mode(self.network), torch.no_grad():
            for start in range(0, len(patches), self.batch_size):
                batch = torch.from_numpy(patches[start : start + self.batch_size]).to(self.device, non_blocking=True)
                outputs.append(self.forward(batch).float().cpu())
                if self.on_pass is not None:
                    self.on_pass(len(batch), len(set(owners[start : start + self.batch_size].tolist())))
        return torch.cat(outputs)

    def _outputs_of_views(self, views: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mean output of each view: its covering patches, several views' patches in one pass."""
        if self.patch_size is None:  # whole images of different sizes cannot share a batch
            return [self._run(view[None], np.zeros(1, int)).mean(dim=0).numpy() for view in views]
        from protloc.data.patches import pad_to, patch_grid

        # The patches are cut batch by batch, each padded on its own: stacking all of them (and padding
        # the whole image first) held a 1x100000 image as 98 patches of 1024² and a 1024x100000 copy,
        # 3.6 GB; now memory is one batch of patches whatever the image's size or shape.
        size = self.patch_size
        corners = [(i, y, x) for i, view in enumerate(views) for y, x in patch_grid(*view.shape[-2:], size)]
        owners = np.array([i for i, _, _ in corners])
        outputs = []
        for start in range(0, len(corners), self.batch_size):
            batch = np.stack([pad_to(views[i][:, y : y + size, x : x + size], size, size)
                              for i, y, x in corners[start : start + self.batch_size]])
            outputs.append(self._run(batch, owners[start : start + self.batch_size]).numpy())
        outputs = np.concatenate(outputs)
        return [outputs[owners == i].mean(axis=0) for i in range(len(views))]

    def predict_many(self, images: Iterable, pixel_sizes: Sequence[float | None] | None = None) -> list[np.ndarray]:
        """Mean output [K] of each raw image (averaged over the eight views with ``tta``).

        ``pixel_sizes``: each image's µm per pixel (None entries: the inferer's default)."""
        images = list(images)
        sizes = list(pixel_sizes) if pixel_sizes is not None else [None] * len(images)
        inputs = [self.model_input(image, size) for image, size in zip(images, sizes)]
        if not inputs:
            return []
        per_image = 8 if self.tta else 1
        views = [view for image in inputs for view in (dihedral_views(image) if self.tta else [image])]
        outputs = self._outputs_of_views(views)
        return [np.mean(outputs[i * per_image : (i + 1) * per_image], axis=0).astype(np.float32)
                for i in range(len(inputs))]

    def __call__(self, image, pixel_size_um: float | None = None) -> np.ndarray:
        """Mean output [K] of one raw image [C, H, W] (of ``pixel_size_um`` µm per pixel, if known)."""
        return self.predict_many([image], [pixel_size_um])[0]

    def window_outputs(self, image, corners: Sequence[tuple[int, int]]) -> np.ndarray:
        """Outputs [len(corners), K] of the patches at the given top-left corners (the sliding-window
        maps' grid) of one raw image, zero-padded to at least one patch."""
        if self.patch_size is None:
            raise ProtlocError("window outputs need a patch size")
        from protloc.data.patches import pad_to

        image = pad_to(self.model_input(image), self.patch_size, self.patch_size)
        size = self.patch_size
        patches = np.stack([image[:, y : y + size, x : x + size] for y, x in corners])
        return self._run(patches, np.zeros(len(corners), int)).numpy()


def predict_dataset(
    inferer: Inferer,
    ids: Sequence[str],
    load: Callable[[str], np.ndarray],
    *,
    progress: bool = True,
    description: str = "predicting",
) -> np.ndarray:
    """Outputs [len(ids), K] of the samples ``load(id)`` reads (float32 [4, H, W]), in the order of
    ``ids``; a tqdm bar (rate, ETA) goes to stderr when ``progress``."""
    from tqdm.auto import tqdm

    results = [inferer(load(sample_id))
               for sample_id in tqdm(list(ids), desc=description, unit="image", disable=not progress, leave=False)]
    if not results:
        return np.zeros((0, getattr(inferer.network, "num_classes", 0)), dtype=np.float32)
    return np.stack(results).astype(np.float32)
