"""What every protloc network shares: paper metadata, the loss hook and the input-size check."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError


@dataclass(frozen=True)
class PaperDefaults:
    """The training set-up the paper used for a network (architectures.md, paper section 3)."""

    learning_rate: float
    batch_size: int
    dropout: float
    input_size: int  # the crop size it was designed and trained for (square)
    fixed_input_size: bool  # True when dense layers fix the input size

    def to_dict(self) -> dict:
        return asdict(self)


def multitask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the batch and summed over the classes.

    The authors' training code sums the 13 per-class losses; the paper's learning rates, gradient
    clipping at norm 5 and L1/L2 penalties were tuned at that scale, so it is kept.
    """
    per_element = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_element.mean(dim=0).sum()


class LocalizationNet(nn.Module):
    """Base class: float32 [B, C, H, W] in, logits [B, num_classes] out.

    ``forward_with_aux`` returns every output the model's own loss needs (``logits`` always);
    ``loss`` is the model's training loss on those outputs. The default is the paper's multi-task
    binary cross-entropy; a model with its own loss (Conv MIL) overrides both.
    """

    paper: PaperDefaults
    name: str

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self(x)}

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return multitask_bce(outputs["logits"], targets)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ProtlocError(
                f"{self.name} expects input [batch, {self.in_channels}, height, width], got {list(x.shape)}"
            )
        if self.paper.fixed_input_size:
            size = self.input_size
            if tuple(x.shape[-2:]) != (size, size):
                raise ProtlocError(
                    f"{self.name} has dense layers built for {size}x{size} inputs and cannot take "
                    f"{x.shape[-2]}x{x.shape[-1]}; crop or patch to {size}x{size}, or create it with input_size="
                    f"{x.shape[-2]} (square inputs only)"
                )


def count_parameters(module: nn.Module) -> int:
    """Number of learned parameters (works on the ``meta`` device, where nothing is allocated)."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
