"""``train(config) -> RunResult``: one training run into a run directory.

RUN_DIR/
    config.yaml            the resolved configuration (every default filled in)
    index.json, splits.json  the data index and split the run used (a resume reads these, not the data folder's)
    environment.json       versions, device, command line (and each resume's)
    metrics.csv            one row per epoch (see lightning_module.METRIC_COLUMNS)
    tensorboard/           TensorBoard event files
    checkpoints/last.ckpt  written atomically after every validation: what --resume continues from
    checkpoints/best.ckpt  the epoch with the best validation mean F1 (and best_val_predictions.npz)
    model.pt               the best network as a protloc model file, with crop size and thresholds
                           tuned on its validation predictions

Multi-GPU / multi-node: run the same command under ``torchrun``; Lightning's DDP strategy reads
torchrun's environment. Only global rank 0 writes the run directory's files.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import logging
import os
import platform
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.training.config import TrainConfig, read_yaml, resolve, save_yaml


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "completed" | "nan-loss"
    message: str
    epochs_completed: int
    best_epoch: int | None
    best_val_mean_f1: float | None
    model_path: Path | None


def global_rank() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0)) * int(
        os.environ.get("LOCAL_WORLD_SIZE", 1))


def torchrun_layout() -> tuple[int, int] | None:
    """(devices per node, nodes) when started by torchrun, else None."""
    if "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ):
        local, world = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), int(os.environ.get("WORLD_SIZE", 1))
        return local, max(1, world // max(1, local))
    return None


def model_options(model: str, config: TrainConfig, paper) -> dict:
    from protloc.models import model_class

    accepted = inspect.signature(model_class(model)).parameters
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    options = {}
    if config.dropout is not None and config.dropout != paper.dropout:
        options["dropout"] = config.dropout
    if paper.fixed_input_size and config.crop_size != paper.input_size:
        options["input_size"] = config.crop_size
    # The registry factories take **options; the model classes reject what they do not know.
    return options if takes_kwargs else {k: v for k, v in options.items() if k in accepted}


def new_training_network(config: TrainConfig, num_classes: int):
    """(network freshly initialised from the config's seed, its model options, its paper settings)."""
    import torch

    from protloc.models import create_model
    from protloc.training.config import paper_defaults

    paper = paper_defaults(config.model)
    options = model_options(config.model, config, paper)
    torch.manual_seed(config.seed)  # the initial weights depend only on the seed
    try:
        network = create_model(config.model, num_classes=num_classes, in_channels=4, **options)
    except TypeError as exc:
        raise ProtlocError(f"{config.model} does not take these options {sorted(options)}: {exc}") from None
    return network, options, paper


def check_crop(config: TrainConfig, paper, index, ids) -> None:
    if not paper.fixed_input_size:
        return
    largest = max(max(index.entry(i).height, index.entry(i).width) for i in ids)
    if config.crop_size > largest:
        raise ProtlocError(
            f"crop size {config.crop_size} is larger than every image (largest side {largest}); {config.model} has "
            f"dense layers built for the crop size, so its input would be mostly zero padding: use --crop-size "
            f"{largest} or less"
        )


def _existing_run(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints" / "last.ckpt").is_file()


def _no_run_to_resume(run_dir: Path) -> ProtlocError:
    if not run_dir.is_dir():
        return ProtlocError(f"nothing to resume: no run directory {run_dir}")
    return ProtlocError(f"nothing to resume in {run_dir}: it has no config.yaml, so the run never started; "
                        f"start it again without --resume (the folder may be removed first)")


def resume_config(run_dir: Path, overrides: dict | None = None) -> TrainConfig:
    """The run's saved config with ``overrides`` (e.g. more epochs, another device) applied.

    A run killed before its first checkpoint has a config.yaml but no checkpoints/last.ckpt; it is
    resumed from epoch 1 (see ``train``).
    """
    if not (run_dir / "config.yaml").is_file():
        raise _no_run_to_resume(run_dir)
    saved = read_yaml(run_dir / "config.yaml")
    saved = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    config = TrainConfig().merged(saved, source=str(run_dir / "config.yaml"))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    fixed = {"model", "data", "crop_size", "seed", "split_seed", "split_fractions", "limit_train", "limit_val"}
    changed = [k for k, v in given.items() if k.replace("-", "_") in fixed and v != getattr(config, k.replace("-", "_"))]
    if changed:
        raise ProtlocError(f"--resume continues the run as it was; it cannot change {', '.join(sorted(changed))}")
    return config.merged({k: v for k, v in given.items() if k not in ("out",)}, source="command line")


def environment(config: TrainConfig, world: int) -> dict:
    import lightning
    import numpy
    import torch

    from protloc.version import __version__ as protloc_version

    cuda = torch.cuda.is_available() and config.device == "cuda"
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {"protloc": protloc_version, "torch": torch.__version__, "lightning": lightning.__version__,
                     "numpy": numpy.__version__},
        "device": config.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world,
        "precision": config.precision,
    }


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (r".*does not have many workers.*", r".*smaller than the logging interval.*",
                    r".*LeafSpec.*", r".*is deprecated.*TreeSpec.*", r".*`isinstance\(treespec, LeafSpec\)`.*",
                    r".*Checkpoint directory .* exists and is not empty.*",
                    # validation metrics are computed from predictions gathered from every rank, so
                    # each rank logs the same value: no further reduction is needed
                    r".*when logging on epoch level in distributed setting.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _cache_dir(config: TrainConfig, index, run_dir: Path) -> Path | None:
    from protloc.data.index import folder_is_writable

    if config.cache is not None:
        return None if config.cache.lower() == "none" else Path(config.cache)
    default = Path(index.root) / ".protloc" / "cache"
    return default if folder_is_writable(default) else run_dir / "cache"


def write_run_model(run_dir: Path, config: TrainConfig, network, options: dict, index, scale=None) -> Path | None:
    """model.pt from checkpoints/best.ckpt, with thresholds tuned on that epoch's validation predictions."""
    import numpy as np
    import torch

    from protloc.model_file import save_model_file

    best = run_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        return None
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    state = {k.removeprefix("network."): v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}
    network.load_state_dict(state)
    info = checkpoint.get("protloc") or {}
    thresholds = None
    predictions = run_dir / "checkpoints" / "best_val_predictions.npz"
    if predictions.is_file():
        from protloc.evaluation.metrics import tune_thresholds

        with np.load(predictions) as data:
            if int(data["epoch"]) == info.get("best_epoch") and len(data["labels"]):
                thresholds = [float(t) for t in tune_thresholds(data["labels"], data["probs"])]
    path = run_dir / "model.pt"
    save_model_file(
        path, network.float().to(memory_format=torch.contiguous_format), model_name=config.model,
        classes=list(index.label_set.classes), label_set=index.label_set.name, model_options=options,
        crop_size=config.crop_size, thresholds=thresholds,
        source={"kind": "training-run", "run_dir": str(run_dir.resolve()), "epoch": info.get("best_epoch"),
                "val_mean_f1": info.get("best_f1"), "thresholds_tuned_on": "val" if thresholds else None,
                **({"transfer": scale.init.to_dict()} if scale is not None and scale.init is not None else {})},
        pixel_size_um=None if scale is None else scale.model_um,
        pixel_size_source=None if scale is None else scale.model_source,
    )
    return path


def train(config: TrainConfig, resume: bool = False) -> RunResult:
    """Train with the paper's protocol; see the module docstring for what RUN_DIR holds."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from protloc.data.index import DatasetIndex, open_dataset
    from protloc.data.splits import load_splits, make_splits, save_splits
    from protloc.training.datamodule import ProtlocDataModule
    from protloc.training.lightning_module import (
        AtomicCheckpointIO, LocalizationModule, NonFiniteLossError, RateProgressBar, format_f1, truncate_metrics,
    )

    if not config.out:
        raise ProtlocError("no run directory given (--out RUN_DIR)")
    run_dir = Path(config.out)
    rank = global_rank()
    last = run_dir / "checkpoints" / "last.ckpt"
    # A run killed before its first checkpoint (config, index and split written, no last.ckpt) is
    # resumed from epoch 1 with its own index and split.
    from_checkpoint = resume and last.is_file()
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise _no_run_to_resume(run_dir)
    elif rank == 0 and _existing_run(run_dir):
        raise ProtlocError(f"{run_dir} already holds a training run; use --resume to continue it or another --out")
    config = resolve(config)

    # data: a resumed run reads its own copies of the index and the split
    if resume:
        index = DatasetIndex.load(run_dir / "index.json")
        splits = load_splits(run_dir / "splits.json")
    else:
        if not config.data:
            raise ProtlocError("no data given (--data DIR)")
        if not Path(config.data).exists():
            raise ProtlocError(f"data folder not found: {config.data}")
        index = open_dataset(config.data)
        if config.splits:
            splits = load_splits(config.splits)
        else:
            splits = make_splits(index, seed=config.split_seed, fractions=tuple(config.split_fractions))
    labelled = {entry.id for entry in index.samples if entry.labels is not None}
    train_ids = [i for i in splits["train"] if i in labelled][: config.limit_train]
    val_ids = [i for i in splits["val"] if i in labelled][: config.limit_val]
    if not train_ids:
        raise ProtlocError(f"no labelled training samples in {index.root} {_why_no_samples(index)}")
    if not val_ids:
        raise ProtlocError(f"the validation split of {index.root} is empty ({len(labelled)} labelled samples); "
                           "add samples or change split_fractions in a --config file")
    network, options, paper = new_training_network(config, len(index.label_set))
    check_crop(config, paper, index, train_ids + val_ids)
    from protloc.training.transfer import prepare_transfer

    check_crop(config, paper, index, train_ids + val_ids)  # before the notes: a refused run prints one line
    scale = prepare_transfer(network, config, index, announce=rank == 0)

    layout = torchrun_layout()
    if layout is not None:
        devices, num_nodes = layout
    else:
        devices, num_nodes = (1 if config.devices == "auto" else int(config.devices)), 1
    world = devices * num_nodes

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        env = environment(config, world)
        if resume:
            previous = {}
            try:
                previous = json.loads((run_dir / "environment.json").read_text())
            except (OSError, ValueError):
                pass
            env = {**previous, "resumes": [*previous.get("resumes", []), env]}
            truncate_metrics(run_dir / "metrics.csv", _checkpoint_epochs(last) if from_checkpoint else 0)
            if not from_checkpoint:  # files of an attempt that no checkpoint continues
                for stale in ("best.ckpt", "best_val_predictions.npz"):
                    (run_dir / "checkpoints" / stale).unlink(missing_ok=True)
        else:
            index.save(run_dir / "index.json")
            save_splits(splits, run_dir / "splits.json", seed=config.split_seed,
                        fractions=tuple(config.split_fractions), index=index)
        from protloc.files import atomic_write_text

        save_yaml(config, run_dir / "config.yaml", extra={"model_options": options})
        atomic_write_text(run_dir / "environment.json", json.dumps(env, indent=1) + "\n")

    _quiet_lightning()
    torch.manual_seed(config.seed)
    cuda = config.device == "cuda"
    if config.channels_last:
        network = network.to(memory_format=torch.channels_last)
    progress = config.progress if config.progress is not None else sys.stderr.isatty()
    datamodule = ProtlocDataModule(
        index, train_ids, val_ids, crop_size=config.crop_size, batch_size=config.batch_size, seed=config.seed,
        workers=config.workers, pin_memory=cuda, cache_dir=_cache_dir(config, index, run_dir), progress=progress,
        scale=scale.factor,
    )
    module = LocalizationModule(network, config, index.label_set.classes, run_dir=run_dir)
    # Two callbacks: Lightning's save_last only writes last.ckpt when the monitored top-k file is
    # written, i.e. not after an epoch that did not improve; the resume point must follow every epoch.
    # Both save after validation (so after the plateau step); "best" comes first so that last.ckpt
    # carries the best-tracker's updated state.
    best_checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val_mean_f1", mode="max", save_top_k=1,
        save_last=False, enable_version_counter=False, auto_insert_metric_name=False, save_on_train_epoch_end=False,
    )
    last_checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, save_last=False,
        enable_version_counter=False, auto_insert_metric_name=False, save_on_train_epoch_end=False,
    )
    checkpoints = [best_checkpoint, last_checkpoint]
    steps_per_epoch = max(1, -(-len(train_ids) // (config.batch_size * world)))
    trainer = pl.Trainer(
        accelerator="cuda" if cuda else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=config.precision,
        max_epochs=config.epochs,
        gradient_clip_val=config.grad_clip_norm,
        gradient_clip_algorithm="norm",
        callbacks=[*checkpoints, RateProgressBar()] if progress else checkpoints,
        plugins=[AtomicCheckpointIO()],
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=min(50, steps_per_epoch),
        benchmark=cuda,
        default_root_dir=str(run_dir),
    )
    status, message = "completed", ""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if from_checkpoint else None)
    except NonFiniteLossError as exc:
        status, message = "nan-loss", str(exc)
    model_path = None
    if rank == 0:
        model_path = write_run_model(run_dir, config, network, options, index, scale=scale)
    epochs_done = trainer.current_epoch if status == "completed" else module.current_epoch
    if status == "completed":
        message = (f"trained {config.model} for {epochs_done} epochs; best val mean F1 "
                   f"{format_f1(module.best_f1)} at epoch {module.best_epoch}; run in {run_dir}")
    return RunResult(run_dir=run_dir, status=status, message=message, epochs_completed=epochs_done,
                     best_epoch=module.best_epoch, best_val_mean_f1=module.best_f1, model_path=model_path)


def _why_no_samples(index) -> str:
    if index.excluded:
        first = index.excluded[0]
        return (f"({len(index.excluded)} excluded by the scan, e.g. {first['id']}: {first['reason']}; all of them: "
                f"protloc data scan {index.root})")
    if index.samples and not index.labelled():
        return "(no labels file: labels.csv for channel files, train.csv for kaggle-hpa, labels.txt for npz)"
    return "(labels.csv missing or empty?)"


def _checkpoint_epochs(path: Path) -> int:
    """How many epochs a Lightning checkpoint has completed (its validation done)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("protloc") or {}
    # The checkpoint is written after the epoch's validation, before its epoch counter advances.
    return int(checkpoint.get("epoch", -1)) + 1 if state else 0
