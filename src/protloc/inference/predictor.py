"""The prediction API of the CLI and the web platform: a model file and the one inferer, ready to use.

``load_model("pretrained" | FILE | RUN_DIR)`` returns a ``Predictor``: the network (canonical channel
order in, logits out) with its classes, decision thresholds and training crop size, and methods that
take a canonical float32 [4, H, W] sample of any size.

It is the one way a protloc model file becomes a usable model: ``protloc predict``, evaluation,
cross-validation, the expert study, export, the benchmarks and the platform all call it, and take
their ``Inferer`` from ``Predictor.inferer`` so the model's pixel size always travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from protloc.devices import resolve_device
from protloc.errors import ProtlocError
from protloc.inference.inferer import Inferer
from protloc.inference.precision import check_precision, compile_selu_worth, resolve_precision
from protloc.model_file import model_pixel_size, network_from_model_file, read_model_file

DEFAULT_PATCH_SIZE = 1024


def resolve_model_file(spec: str | Path) -> Path:
    """A model spec to a protloc model file: ``pretrained``, a model file, or a training run folder."""
    if str(spec) == "pretrained":
        from protloc.pretrained.fetch import resolve_pretrained

        return resolve_pretrained()
    path = Path(spec)
    if path.is_dir():
        candidate = path / "model.pt"
        if not candidate.is_file():
            raise ProtlocError(f"{path} is a folder without model.pt: not a finished training run")
        return candidate
    if not path.exists():
        raise ProtlocError(f"no model {str(spec)!r}: give 'pretrained', a model file or a training run folder")
    return path


@dataclass
class Predictor:
    network: torch.nn.Module
    classes: list[str]
    thresholds: np.ndarray
    patch_size: int
    model_name: str
    source: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = ""
    pixel_size_um: float | None = None  # the pixel size the network was trained at (None: not recorded)
    pixel_size_source: str = "unknown"
    # The precision its inferers run at unless a call says otherwise (fp32, bf16, fp16, int8 or auto,
    # resolved by the Inferer), and how many fields the run holds (math.inf: a server), which decides
    # whether GapNet-PL's SELU is compiled.
    precision: str = "fp32"
    fields: float | None = None

    @property
    def resolved_precision(self) -> str:
        """The precision this predictor's image-level answers run at on this machine."""
        return resolve_precision(self.precision, self.device).precision

    def maps_options(self) -> dict:
        """The fast path's options for GapNet-PL's block feature maps (the per-cell path): the
        predictor's precision resolved for maps (int8 has none) and whether to compile SELU."""
        resolved = resolve_precision(self.precision, self.device, maps=True)
        from protloc.inference.precision import announce

        announce(resolved)
        return {"precision": resolved.precision, "compile_selu": compile_selu_worth(self.fields)}

    # The model file's entries as loaded, without the weights (those live in ``network``): callers that
    # rewrite or extend the file (threshold tuning, fine-tuning, export) start from these.
    model_file: dict = field(default_factory=dict)

    @property
    def fully_convolutional(self) -> bool:
        return not self.network.paper.fixed_input_size

    def predict_proba(
        self,
        image: np.ndarray,
        *,
        whole_image: bool = False,
        tta: bool = False,
        batch_size: int = 4,
        precision: str | None = None,
        pixel_size_um: float | None = None,
    ) -> np.ndarray:
        """Class probabilities [num_classes] for one raw canonical sample [4, H, W] of any size.

        ``pixel_size_um``: the sample's µm per pixel; it is first rescaled to the model's pixel size
        (``self.pixel_size_um``). None: used as it is.

        Default: the paper's covering patches of the training crop size, sigmoid outputs averaged.
        ``whole_image``: one pass over the whole normalised image (fully convolutional models only).
        ``tta``: average over the eight flips and 90° rotations.
        ``precision`` (default: the predictor's): "fp32" (GapNet-PL runs its fast path, equal to the
        plain forward within 1e-6 relative), "bf16" (bfloat16 arithmetic: 1.7x faster than fp32 on CPUs
        with AVX512-BF16, probabilities within a few hundredths; other networks run under bf16
        autocast), "fp16" (CUDA), "int8" or "auto" (docs/precision.md).
        """
        inferer = self.inferer(whole_image=whole_image, tta=tta, batch_size=batch_size, precision=precision)
        return inferer(self._check_image(image), pixel_size_um)

    def inferer(self, *, whole_image: bool = False, tta: bool = False, batch_size: int = 4,
                precision: str | None = None, on_pass=None, forward=None,
                pixel_size_um: float | None = None, plain: bool = False) -> Inferer:
        """The ``Inferer`` of this model with these options (see ``predict_proba``; ``on_pass`` and
        ``forward``: see ``Inferer``). ``precision`` None: the predictor's; ``plain``: the network's
        plain forward under the caller's autocast, as validation runs it (evaluation, fine-tuning).
        ``pixel_size_um``: the inputs' µm per pixel when a call does not say (a data set's); the
        model's own pixel size is always set."""
        precision = None if plain else check_precision(precision or self.precision, allow_auto=True)
        if whole_image and not self.fully_convolutional:
            raise ProtlocError(f"{self.model_name} has fixed-size dense layers: whole-image prediction needs patches")
        return Inferer(self.network, None if whole_image else self.patch_size, batch_size=batch_size, tta=tta,
                       precision=precision, device=self.device, on_pass=on_pass, forward=forward,
                       model_pixel_size_um=self.pixel_size_um, pixel_size_um=pixel_size_um, fields=self.fields,
                       model_file=self.source.get("file"))

    def predict(self, image: np.ndarray, **options) -> dict[str, float]:
        probs = self.predict_proba(image, **options)
        return {cls: float(p) for cls, p in zip(self.classes, probs)}

    def predicted(self, probs: np.ndarray) -> list[str]:
        return [cls for cls, p, t in zip(self.classes, probs, self.thresholds) if p >= t]

    def localization_maps(self, image: np.ndarray, classes: list[str] | None = None) -> dict[str, np.ndarray]:
        """Where the evidence for each class lies: [H, W] float32 maps in [0, 1].

        GapNet-PL: class activation maps through its global-average features (gradient of the class
        logit with respect to each averaged feature, times that feature's map, summed over the three
        blocks). Other models: patch probabilities on a sliding grid of half-patch stride.
        """
        from protloc.inference.maps import class_activation_maps, sliding_window_maps
        from protloc.models.gapnet_pl import GapNetPL

        image = self._check_image(image)
        wanted = list(classes) if classes is not None else list(self.classes)
        unknown = [c for c in wanted if c not in self.classes]
        if unknown:
            raise ProtlocError(f"unknown class {unknown[0]!r} for this model")
        indices = [self.classes.index(c) for c in wanted]
        if isinstance(self.network, GapNetPL):
            maps = class_activation_maps(self.network, image, indices, device=self.device)
        else:
            maps = sliding_window_maps(Inferer(self.network, self.patch_size, device=self.device), image, indices)
        return dict(zip(wanted, maps))

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[0] != len(self.network_channels):
            raise ProtlocError(
                f"expected a sample [{len(self.network_channels)}, height, width], got shape {list(image.shape)}"
            )
        return image.astype(np.float32, copy=False)

    @property
    def network_channels(self) -> list[str]:
        return list(self.source.get("channels") or ["nucleus", "microtubules", "er", "protein"])


def load_model(spec: str | Path = "pretrained", device: str | torch.device | None = "cpu", *,
               precision: str = "fp32") -> Predictor:
    """A ready-to-use predictor from ``pretrained``, a protloc model file or a training run folder.

    ``device``: see ``protloc.devices.resolve_device`` (``auto``/None: a CUDA GPU when there is one).
    ``precision``: what its inferers run at (``Predictor.precision``; auto is resolved when they run)."""
    check_precision(precision, allow_auto=True)
    # --- hook (issue 14): an exported .onnx model runs through onnxruntime ---
    if str(spec).lower().endswith(".onnx"):
        from protloc.export.onnx_runtime import load_onnx_predictor
        predictor = load_onnx_predictor(spec, device=device)
        if precision not in ("fp32", "auto"):
            raise ProtlocError(f"an .onnx model runs as exported (fp32): --precision {precision} needs the .pt model")
        return predictor
    # --- end hook ---
    path = resolve_model_file(spec)
    payload = read_model_file(path)
    device = resolve_device(device)
    network = network_from_model_file(payload)
    try:
        network = network.to(device)
    except RuntimeError as exc:  # the device is there but unusable (out of memory, driver)
        raise ProtlocError(f"cannot use device {str(device)!r}: {str(exc).splitlines()[0]}") from None
    classes = list(payload["classes"])
    thresholds = payload.get("thresholds") or [0.5] * len(classes)
    if len(thresholds) != len(classes):
        raise ProtlocError(f"{path}: {len(thresholds)} thresholds for {len(classes)} classes")
    label = "pretrained" if str(spec) == "pretrained" else Path(spec).name
    pixel_size_um, pixel_size_source = model_pixel_size(payload)
    return Predictor(
        network=network,
        classes=classes,
        thresholds=np.asarray(thresholds, dtype=np.float32),
        patch_size=int(payload.get("crop_size") or network.paper.input_size or DEFAULT_PATCH_SIZE),
        model_name=payload["model"],
        source={**payload.get("source", {}), "channels": payload["channels"], "file": str(path)},
        device=device,
        name=f"{payload['model']} ({label})",
        pixel_size_um=pixel_size_um,
        pixel_size_source=pixel_size_source,
        precision=precision,
        model_file={key: value for key, value in payload.items() if key != "state_dict"},
    )
