"""Transfer learning: start a network from existing weights (``protloc train --init``).

``--init pretrained|MODEL_FILE|RUN_DIR`` loads every weight of the given model into the new network.
When the new label set differs from the model's (e.g. Kaggle's 28 classes on the published 13-class
weights) the output layer (the last ``nn.Linear``: GapNet-PL's fc3) is replaced by a freshly
initialised one of the new size and everything else is kept. The *head* is the dense part (every
``nn.Linear``: GapNet-PL's fc1-fc3); the *encoder* is everything else (the convolutions).
``--freeze-encoder`` stops the encoder's gradients; ``--head-lr`` gives the head its own learning rate.

The pixel size travels with the weights: a network started from a model trained at 0.08 µm/px is
trained (and later used) at 0.08 µm/px, the data rescaled to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from protloc.errors import ProtlocError


def head_modules(network: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]


def output_layer(network: nn.Module) -> tuple[str, nn.Linear]:
    """The layer that makes the logits: the last ``nn.Linear`` in registration order."""
    linears = head_modules(network)
    if not linears:
        raise ProtlocError(f"{type(network).__name__} has no linear output layer to replace")
    return linears[-1]


def head_parameter_names(network: nn.Module) -> set[str]:
    names = set()
    for prefix, module in head_modules(network):
        names.update(f"{prefix}.{name}" for name, _ in module.named_parameters())
    return names


@dataclass
class InitInfo:
    spec: str
    model_file: str
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    pixel_size_um: float | None = None
    pixel_size_source: str = "unknown"
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"init": self.spec, "model_file": self.model_file, "kept_tensors": len(self.kept),
                "replaced": self.replaced, "init_classes": self.classes,
                "pixel_size_um": self.pixel_size_um, "pixel_size_source": self.pixel_size_source}


def read_init(spec: str) -> tuple[dict, str]:
    from protloc.model_file import read_model_file
    from protloc.inference.predictor import resolve_model_file

    path = resolve_model_file(spec)
    return read_model_file(path), str(path)


def initialise(network: nn.Module, model_name: str, classes, spec: str) -> InitInfo:
    """Load the weights named by ``spec`` into ``network``; replace the output layer if the classes differ."""
    from protloc.model_file import model_pixel_size

    payload, path = read_init(spec)
    if payload["model"] != model_name:
        raise ProtlocError(f"--init {spec}: that is a {payload['model']} model; this run trains {model_name} "
                           f"(use --model {payload['model']})")
    state = dict(payload["state_dict"])
    same_classes = list(payload["classes"]) == list(classes)
    replaced: list[str] = []
    if not same_classes:
        prefix, _ = output_layer(network)
        replaced = [key for key in state if key.startswith(prefix + ".")]
        for key in replaced:
            del state[key]
    missing, unexpected = network.load_state_dict(state, strict=False)
    if unexpected or sorted(missing) != sorted(replaced):
        wrong = (unexpected or sorted(set(missing) - set(replaced)))[:3]
        raise ProtlocError(f"--init {spec}: its weights do not fit this {model_name} ({', '.join(wrong)}); "
                           "were other model options used?")
    pixel_um, pixel_source = model_pixel_size(payload)
    return InitInfo(spec=str(spec), model_file=path, kept=sorted(state), replaced=replaced,
                    pixel_size_um=pixel_um, pixel_size_source=pixel_source, classes=list(payload["classes"]))


def freeze_encoder(network: nn.Module) -> int:
    """Stop the gradients of every parameter outside the head; returns how many tensors were frozen."""
    head = head_parameter_names(network)
    frozen = 0
    for name, parameter in network.named_parameters():
        if name not in head:
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


def parameter_groups(network: nn.Module, lr: float, head_lr: float | None) -> list[dict]:
    """SGD parameter groups: the encoder at ``lr``, the head at ``head_lr`` (default ``lr``); frozen ones left out."""
    head = head_parameter_names(network)
    encoder = [p for n, p in network.named_parameters() if n not in head and p.requires_grad]
    dense = [p for n, p in network.named_parameters() if n in head and p.requires_grad]
    groups = []
    if encoder:
        groups.append({"params": encoder, "lr": lr, "name": "encoder"})
    if dense:
        groups.append({"params": dense, "lr": head_lr if head_lr is not None else lr, "name": "head"})
    if not groups:
        raise ProtlocError("nothing to train: every parameter is frozen")
    return groups


def set_frozen_modules_eval(network: nn.Module) -> None:
    """Batch-norm layers of a frozen encoder keep their running statistics (eval mode) while training."""
    head = {name for name, _ in head_modules(network)}
    for name, module in network.named_modules():
        if name not in head and isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


@dataclass
class TrainingScale:
    """The pixel sizes of a run: the data's, the network's, and the factor between them."""

    data_um: float | None
    data_source: str
    model_um: float | None
    model_source: str
    factor: float
    init: InitInfo | None = None


def prepare_transfer(network: nn.Module, config, index, announce: bool = True) -> TrainingScale:
    """Apply ``--init`` and ``--freeze-encoder`` to a new network; decide the pixel size it trains at.

    Started from a model that records a pixel size, the run trains at that size (the data rescaled
    to it); otherwise at the data's own pixel size, which the exported model records.
    """
    import sys

    from protloc.data.index import data_pixel_size
    from protloc.data.pixel_size import describe, scale_factor

    info = None
    if config.init:
        info = initialise(network, config.model, index.label_set.classes, config.init)
        if announce:
            what = (f"output layer {', '.join(info.replaced)} replaced ({len(info.classes)} -> "
                    f"{len(index.label_set)} classes)" if info.replaced else "all layers kept (same classes)")
            print(f"init: {len(info.kept)} weight tensors from {info.spec}; {what}", file=sys.stderr)
    if config.freeze_encoder:
        frozen = freeze_encoder(network)
        if announce:
            print(f"encoder frozen: {frozen} tensors; training the head only", file=sys.stderr)
    data = data_pixel_size(index, config.pixel_size)
    if info is not None and info.pixel_size_um is not None:
        model_um, model_source = info.pixel_size_um, f"from --init {info.spec}: {info.pixel_size_source}"
    else:
        model_um, model_source = data.um, f"the training data's: {data.source}"
    factor = scale_factor(data.um, model_um)
    if announce and info is not None:
        print(describe(data, model_um), file=sys.stderr)
    elif announce and data.known:
        print(f"pixel size: data {data.um:g} µm/px ({data.source}); the model is trained at it", file=sys.stderr)
    return TrainingScale(data.um, data.source, model_um, model_source, factor, info)
