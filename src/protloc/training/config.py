"""Training options: the paper's protocol as defaults, a YAML file over them, command-line flags on top.

Precedence (lowest first): the protocol defaults below and the model's ``PaperDefaults`` (learning
rate, batch size, dropout, crop size), then a YAML file (``--config``: a path, or the name of a
shipped config such as ``gapnet-pl``), then command-line flags. ``resolve`` fills every "auto"/None
so that the run directory's config.yaml records exactly what ran.

Plateau rule. The authors' configuration says patience 30, factor 0.5, threshold 0.01, mode max.
Both of their training scripts read the threshold as *relative*: the TensorFlow one tests
``new > best * (1 + 0.01)`` by hand and the PyTorch one uses ``ReduceLROnPlateau`` with its default
``threshold_mode='rel'``; and both halve the rate once the count of epochs without such an
improvement *exceeds* the patience. So the default here is ``plateau_threshold_mode: rel``; ``abs``
(an improvement of 0.01 F1 points) is an option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from protloc.errors import ProtlocError

SHIPPED_CONFIGS = ("gapnet-pl", "densenet-121", "m-cnn", "deeploc", "conv-mil")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "64-true")


@dataclass
class TrainConfig:
    model: str = "gapnet-pl"
    data: str | None = None  # data folder (or index.json)
    out: str | None = None  # run directory
    # protocol (paper section 3.1; the authors' gapnet-pl.json)
    epochs: int = 500
    crop_size: int | None = None  # None: the model's paper input size (1024)
    batch_size: int | None = None  # None: the model's paper batch size
    learning_rate: float | None = None  # None: the model's paper learning rate
    dropout: float | None = None  # None: the model's paper dropout
    momentum: float = 0.9
    l1: float = 1e-7
    l2: float = 1e-5
    grad_clip_norm: float = 5.0
    plateau_patience: int = 30
    plateau_factor: float = 0.5
    plateau_threshold: float = 0.01
    plateau_threshold_mode: str = "rel"
    # data
    seed: int = 0
    split_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    limit_train: int | None = None  # use only the first N training samples (sorted ids)
    limit_val: int | None = None
    cache: str | None = None  # prepared-data cache folder; None: <data>/.protloc/cache; "none": off
    # hardware
    device: str = "auto"  # auto | cpu | cuda
    devices: str | int = "auto"  # per node; auto: torchrun's local world size, else 1
    precision: str = "auto"  # auto: bf16-mixed on CUDA (16-mixed without bf16), 32-true on CPU
    channels_last: bool | None = None  # None: on CUDA
    workers: int | None = None  # DataLoader workers; None: by device and cores
    val_batch_size: int | None = None  # patches per forward pass in validation; None: batch_size
    progress: bool | None = None  # progress bars; None: when stderr is a terminal
    # transfer learning (training/transfer.py)
    init: str | None = None  # pretrained | model file | run folder to start from
    freeze_encoder: bool = False  # train only the head (the dense layers)
    head_lr: float | None = None  # the head's learning rate; None: learning_rate
    pixel_size: float | None = None  # µm per pixel of the data; None: stated by the files / implied by the layout
    max_pixels: int | None = None  # the pixel limit of the data's readers (--max-pixels); None: the default
    splits: str | None = None  # a splits.json to use instead of a fresh random split (cross-validation folds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def merged(self, overrides: dict[str, Any], source: str = "overrides") -> "TrainConfig":
        """A copy with ``overrides`` applied (keys with '-' accepted); unknown keys and bad types -> error."""
        known = {f.name: f for f in fields(self)}
        values = self.to_dict()
        for raw_key, value in overrides.items():
            key = str(raw_key).replace("-", "_")
            if key in ALIASES:
                key = ALIASES[key]
            if key not in known:
                raise ProtlocError(f"{source}: unknown training option {raw_key!r}")
            values[key] = _coerce(key, value, source)
        return TrainConfig(**values)


ALIASES = {"lr": "learning_rate", "patience": "plateau_patience"}

_INT = {"epochs", "crop_size", "batch_size", "plateau_patience", "seed", "split_seed", "limit_train", "limit_val",
        "workers", "val_batch_size", "max_pixels"}
_FLOAT = {"learning_rate", "dropout", "momentum", "l1", "l2", "grad_clip_norm", "plateau_factor", "plateau_threshold",
          "head_lr", "pixel_size"}
_BOOL = {"channels_last", "progress", "freeze_encoder"}
_STR = {"model", "data", "out", "cache", "device", "precision", "plateau_threshold_mode", "init", "splits"}


def _coerce(key: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    try:
        if key in _INT:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key in _BOOL:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if key in _STR:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if key == "devices":
            return value if value == "auto" else int(value)
        if key == "split_fractions":
            fractions = [float(v) for v in value]
            if len(fractions) != 3:
                raise ValueError
            return fractions
    except (TypeError, ValueError):
        raise ProtlocError(f"{source}: option {key!r} has an unusable value {value!r}") from None
    return value


def shipped_config_path(name: str) -> Path:
    return Path(str(resources.files("protloc.configs").joinpath(f"{name}.yaml")))


def read_yaml(spec: str | Path) -> dict:
    """Options from a YAML file (a path, or a shipped config's name); one-line errors for bad files."""
    import yaml

    path = Path(spec)
    if not path.is_file() and str(spec) in SHIPPED_CONFIGS:
        path = shipped_config_path(str(spec))
    if not path.is_file():
        raise ProtlocError(f"config file not found: {spec} (or name a shipped one: {', '.join(SHIPPED_CONFIGS)})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProtlocError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtlocError(f"cannot read config {path}: {exc}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ProtlocError(f"config {path} must be a mapping of option: value, not {type(content).__name__}")
    return content


def load_config(config_file: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides`` (None values are ignored: 'not given')."""
    config = TrainConfig()
    if config_file is not None:
        config = config.merged(read_yaml(config_file), source=str(config_file))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return config.merged(given, source="command line")


def paper_defaults(model: str):
    """The model's ``PaperDefaults``, read from an instance built on the meta device (no memory)."""
    import torch

    from protloc.models import model_class

    factory = model_class(model)  # ProtlocError for unknown models
    with torch.device("meta"):
        return factory(num_classes=13, in_channels=4).paper


def resolve(config: TrainConfig, cuda_available: bool | None = None) -> TrainConfig:
    """Every None/auto filled from the model's paper defaults and the hardware; values checked."""
    import os

    from protloc.models import model_class

    paper = paper_defaults(config.model)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    device = config.device
    if device not in ("auto", "cpu", "cuda"):
        raise ProtlocError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device == "cuda" and not cuda_available:
        raise ProtlocError("--device cuda: no CUDA GPU is available here")
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    precision = config.precision
    if precision not in PRECISIONS:
        raise ProtlocError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "32-true"
        if device == "cuda":
            import torch

            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    workers = config.workers
    if workers is None:
        cores = os.cpu_count() or 1
        # On CUDA, workers decode and crop while the GPU computes; on a small CPU they would only
        # compete with the network for the same cores.
        workers = min(8, max(1, cores - 1)) if device == "cuda" else (0 if cores <= 4 else min(4, cores // 4))
    resolved = dataclasses.replace(
        config,
        device=device,
        precision=precision,
        workers=workers,
        crop_size=config.crop_size or paper.input_size,
        batch_size=config.batch_size or paper.batch_size,
        learning_rate=config.learning_rate if config.learning_rate is not None else paper.learning_rate,
        dropout=config.dropout if config.dropout is not None else paper.dropout,
        channels_last=config.channels_last if config.channels_last is not None else device == "cuda",
    )
    resolved.val_batch_size = resolved.val_batch_size or resolved.batch_size
    check(resolved)
    return resolved


def check(config: TrainConfig) -> None:
    def positive(name: str, value) -> None:
        if value is None or value <= 0:
            raise ProtlocError(f"{name} must be positive, got {value}")

    for name in ("epochs", "crop_size", "batch_size", "learning_rate", "val_batch_size", "grad_clip_norm"):
        positive(name.replace("_", "-"), getattr(config, name))
    if config.plateau_patience < 0:
        raise ProtlocError(f"patience must be 0 or more, got {config.plateau_patience}")
    if not 0 < config.plateau_factor < 1:
        raise ProtlocError(f"plateau factor must be in (0, 1), got {config.plateau_factor}")
    if config.plateau_threshold_mode not in ("rel", "abs"):
        raise ProtlocError(f"plateau threshold mode must be rel or abs, got {config.plateau_threshold_mode!r}")
    if not 0 <= config.dropout < 1:
        raise ProtlocError(f"dropout must be in [0, 1), got {config.dropout}")
    for name in ("l1", "l2", "momentum", "plateau_threshold"):
        if getattr(config, name) < 0:
            raise ProtlocError(f"{name} must not be negative, got {getattr(config, name)}")
    if config.head_lr is not None and config.head_lr <= 0:
        raise ProtlocError(f"head-lr must be positive, got {config.head_lr}")
    if config.pixel_size is not None:
        from protloc.data.pixel_size import check_pixel_size

        check_pixel_size(config.pixel_size)
    if config.workers < 0:
        raise ProtlocError(f"workers must be 0 or more, got {config.workers}")
    for name in ("limit_train", "limit_val"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ProtlocError(f"{name.replace('_', '-')} must be positive, got {value}")
    fractions = config.split_fractions
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ProtlocError(f"split fractions must be non-negative and sum to 1, got {fractions}")


def save_yaml(config: TrainConfig, path: Path, extra: dict | None = None) -> None:
    import yaml

    from protloc.files import atomic_write_text

    content = {**config.to_dict(), **(extra or {})}
    atomic_write_text(path, yaml.safe_dump(content, sort_keys=False))
