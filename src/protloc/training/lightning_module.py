"""The paper's training protocol as a LightningModule (architectures.md, "Training protocol").

- SGD with momentum 0.9 at the model's paper learning rate.
- Loss = the model's own loss (Conv MIL brings its own) + L1 1e-7 · Σ|θ| + L2 1e-5 · Σθ²/2 over
  every trainable parameter, weights and biases alike. The penalty is added to the loss explicitly,
  not as the optimizer's ``weight_decay``: (1) the L1 term has no optimizer counterpart; (2) the
  authors (TeLL ``regularize``: ``l1 * reduce_sum(|w|) + l2 * tf.nn.l2_loss(w)``, where ``l2_loss``
  is Σw²/2) add it to the loss, so its gradient is part of the global norm that is clipped at 5,
  whereas ``weight_decay`` is added inside ``optimizer.step`` after clipping; (3) it is logged and
  visible. The Σθ²/2 convention makes the L2 gradient ``l2 · θ``, the same as SGD's weight_decay.
- Gradients rescaled when their global L2 norm exceeds 5 (Trainer ``gradient_clip_val=5``,
  ``gradient_clip_algorithm='norm'``).
- Validation on whole images: covering patches of the crop size, sigmoid outputs averaged
  (``protloc.inference.Inferer``). Every rank predicts its share; the predictions are gathered
  so that every rank computes the same mean F1.
- ReduceLROnPlateau (mode max, factor 0.5, patience 30, threshold 0.01, relative by default: see
  config.py) on the validation mean F1 at 0.5. It is stepped here, right after the F1 is computed
  and *before* Lightning's ModelCheckpoint saves last.ckpt in ``on_validation_end``; its state goes
  into the checkpoint. (Lightning's own epoch-level plateau stepping happens after the checkpoint is
  written and is skipped on restart, so a resumed run would lag one step behind.)
- Determinism: the torch generator (dropout) is re-seeded from (seed, epoch, rank) at the start of
  every epoch, so an epoch's randomness does not depend on whether the run was resumed.
- A non-finite loss stops training with ``NonFiniteLossError`` before the optimizer applies it.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from protloc.model_file import atomic_torch_save
from protloc.errors import ProtlocError

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mean_f1", "val_mean_auc", "lr", "epoch_seconds",
                  "samples_per_second", "val_seconds", "best")


class NonFiniteLossError(ProtlocError):
    """The training loss became NaN or infinite."""


def regularization_penalty(module: torch.nn.Module, l1: float, l2: float) -> torch.Tensor:
    """l1 · Σ|θ| + l2 · Σθ²/2 over all trainable parameters (weights and biases), as the authors' TeLL."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params or (l1 == 0 and l2 == 0):
        return torch.zeros((), device=params[0].device if params else None)
    total = torch.zeros((), device=params[0].device, dtype=torch.float32)
    for p in params:
        p = p.float()
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + (l2 / 2) * p.pow(2).sum()
    return total


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints through a temporary file, fsync and rename: a crash never leaves a corrupt one.

    (Lightning's own save writes through fsspec; for local files that is not an fsync'ed rename.)
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)


class RateProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar (epoch, batches, ETA) with the loss and samples/s, without the version number."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class NonFiniteOutputError(NonFiniteLossError):
    """The network's validation outputs are NaN or infinite: no metric of them means anything."""


def validation_metrics(labels: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Mean F1 at 0.5 and mean ROC AUC over the classes with positives (protloc.evaluation's rules).

    A mean no class defines (no validation image has any label) is NaN, never a number standing in for
    it; NonFiniteOutputError when an output is NaN or infinite (they are not guessed as 0.5 either).
    """
    from protloc.evaluation.metrics import evaluate_predictions

    bad = ~np.isfinite(probs).all(axis=1) if probs.size else np.zeros(0, bool)
    if bad.any():
        raise NonFiniteOutputError(f"the network's outputs are NaN or infinite for {int(bad.sum())} of {len(probs)} "
                                   "validation images")
    probs = np.clip(probs, 0.0, 1.0)
    summary = evaluate_predictions(labels.astype(np.int64), probs, list(classes))["summary"]
    eps = 1e-7
    bce = -(labels * np.log(np.clip(probs, eps, 1)) + (1 - labels) * np.log(np.clip(1 - probs, eps, 1)))
    return {
        "val_mean_f1": summary["f1"]["mean"] if summary["f1"]["mean"] is not None else float("nan"),
        "val_mean_auc": summary["auc"]["mean"] if summary["auc"]["mean"] is not None else float("nan"),
        "val_loss": float(bce.mean()) if bce.size else float("nan"),
    }


def format_f1(value: float | None) -> str:
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.3f}"


class LocalizationModule(pl.LightningModule):
    def __init__(self, network: torch.nn.Module, config, classes, run_dir: str | Path | None = None) -> None:
        super().__init__()
        self.network = network
        self.config = config
        self.classes = list(classes)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.plateau = None
        self._plateau_state = None
        self.best_f1: float | None = None
        self.best_epoch: int | None = None
        self._reset_epoch_stats()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        cfg = self.config
        from protloc.training.transfer import parameter_groups

        groups = parameter_groups(self.network, cfg.learning_rate, getattr(cfg, "head_lr", None))
        optimizer = torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, threshold_mode=cfg.plateau_threshold_mode,
        )
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _reset_epoch_stats(self) -> None:
        self._loss_sum = 0.0
        self._loss_count = 0
        self._samples = 0
        self._epoch_start = time.perf_counter()
        self._train_seconds = None
        self._last_step_time = None
        self._rate = None
        self._val_outputs: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._nonfinite_loss = None

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(epoch_seed(self.config.seed, self.current_epoch, self.global_rank))
        if getattr(self.config, "freeze_encoder", False):
            from protloc.training.transfer import set_frozen_modules_eval

            set_frozen_modules_eval(self.network)
        self._reset_epoch_stats()

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = self.network.forward_with_aux(x)
        data_loss = self.network.loss(outputs, y)
        loss = data_loss + regularization_penalty(self.network, self.config.l1, self.config.l2)
        value = float(loss.detach())
        if not math.isfinite(value):
            self._nonfinite_loss = value
            if self.trainer.world_size == 1:
                self._raise_nonfinite(value)
            # Under DDP every rank must reach the gradient all-reduce; the NaN spreads through it
            # and on_before_optimizer_step stops all ranks together.
        else:
            self._loss_sum += float(data_loss.detach()) * x.shape[0]
            self._loss_count += x.shape[0]
        self._samples += x.shape[0]
        now = time.perf_counter()
        if self._last_step_time is not None:
            rate = x.shape[0] * self.trainer.world_size / max(now - self._last_step_time, 1e-9)
            self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
        self._last_step_time = now
        self.log("loss", data_loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        if self._rate is not None:
            self.log("samples/s", self._rate, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.network.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.detach().float().norm() for g in grads]).sum())):
            self._raise_nonfinite(self._nonfinite_loss if self._nonfinite_loss is not None else float("nan"),
                                  gradients=True)

    def _raise_nonfinite(self, value: float, gradients: bool = False) -> None:
        what = f"the loss became {value}" if not gradients or self._nonfinite_loss is not None else \
            "the gradients became non-finite"
        raise NonFiniteLossError(
            f"training stopped: {what} at epoch {self.current_epoch + 1}, step {self.global_step} "
            f"(weights not updated with it); {self._best_kept()}; try a lower --lr"
        )

    def _best_kept(self) -> str:
        if self.best_epoch is None:
            return "no epoch finished, so there is no best checkpoint"
        return f"best checkpoint kept (epoch {self.best_epoch}, val mean F1 {format_f1(self.best_f1)})"

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if self._train_seconds is None and not self.trainer.sanity_checking:
            self._train_seconds = time.perf_counter() - self._epoch_start
        self._val_start = time.perf_counter()
        self._val_outputs = []

    def validation_step(self, batch, batch_idx):
        from protloc.inference.inferer import Inferer

        position, image, label = batch
        inferer = Inferer(self.network, self.config.crop_size, batch_size=self.config.val_batch_size,
                          device=self.device)
        probs = inferer(image.numpy())
        self._val_outputs.append((int(position), probs, label.numpy()))

    def _gather(self, items: list) -> list:
        if self.trainer.world_size == 1:
            return items
        gathered = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def _reduce_sum(self, value: float) -> float:
        if self.trainer.world_size == 1:
            return value
        tensor = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        return float(self.trainer.strategy.reduce(tensor, reduce_op="sum"))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        outputs = sorted({position: (probs, label) for position, probs, label in self._gather(self._val_outputs)}
                         .items())
        probs = np.stack([p for _, (p, _) in outputs]) if outputs else np.zeros((0, len(self.classes)))
        labels = np.stack([y for _, (_, y) in outputs]) if outputs else np.zeros((0, len(self.classes)))
        try:
            metrics = validation_metrics(labels, probs, self.classes)
        except NonFiniteOutputError as exc:
            raise NonFiniteOutputError(f"training stopped: {exc} at epoch {self.current_epoch + 1}; "
                                       f"{self._best_kept()}; try a lower --lr") from None
        val_seconds = time.perf_counter() - self._val_start
        train_seconds = self._train_seconds if self._train_seconds is not None else float("nan")
        loss_sum, loss_count = self._reduce_sum(self._loss_sum), self._reduce_sum(self._loss_count)
        samples = self._reduce_sum(self._samples)
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else float("nan")
        f1 = metrics["val_mean_f1"]
        epoch = self.current_epoch + 1
        if not math.isfinite(f1) and self.trainer.is_global_zero:
            print(f"protloc: warning: validation mean F1 is undefined at epoch {epoch}: none of the {len(labels)} "
                  "validation images has a label, so F1 cannot rank the epochs (metrics.csv says nan); check the "
                  "labels file", file=sys.stderr, flush=True)
        # As ModelCheckpoint(mode='max'): strictly better, an undefined F1 ranks below every defined one,
        # and the first epoch is kept whatever it is.
        is_best = self.best_f1 is None or (math.isfinite(f1) and not (self.best_f1 >= f1))
        if is_best:
            self.best_f1, self.best_epoch = f1, epoch
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / loss_count if loss_count else float("nan"),
            **metrics,
            "lr": lr,
            "epoch_seconds": train_seconds,
            "samples_per_second": samples / train_seconds if train_seconds and train_seconds > 0 else float("nan"),
            "val_seconds": val_seconds,
            "best": int(is_best),
        }
        for key in ("val_mean_f1", "val_mean_auc", "val_loss", "train_loss", "lr", "samples_per_second"):
            self.log(key, float(row[key]), on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        if self.plateau is not None and math.isfinite(f1):  # an undefined F1 says nothing about progress
            self.plateau.step(f1)
        if self.trainer.is_global_zero and self.run_dir is not None:
            append_metrics_row(self.run_dir / "metrics.csv", row)
            if is_best:
                from protloc.files import atomic_save_npz

                atomic_save_npz(self.run_dir / "checkpoints" / "best_val_predictions.npz",
                                positions=np.array([p for p, _ in outputs], dtype=np.int64),
                                probs=probs.astype(np.float32), labels=labels.astype(np.float32),
                                epoch=np.array(epoch))

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["protloc"] = {
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "best_f1": self.best_f1,
            "best_epoch": self.best_epoch,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("protloc") or {}
        self._plateau_state = state.get("plateau")
        if self.plateau is not None and self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        self.best_f1, self.best_epoch = state.get("best_f1"), state.get("best_epoch")


def append_metrics_row(path: Path, row: dict) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def truncate_metrics(path: Path, keep_epochs: int) -> None:
    """Drop rows of epochs after ``keep_epochs`` (written after the checkpoint a resume starts from)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("epoch", "").isdigit() and int(r["epoch"]) <= keep_epochs]
    from protloc.files import atomic_write_text
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
