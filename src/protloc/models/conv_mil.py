"""Convolutional multiple-instance learning (Kraus et al., Bioinformatics 2016), architectures.md.

A fully convolutional network turns the image into one map per class (per-location logits); the
noisyAND pooling reduces each map to a bag probability,

    p_i = mean over locations of sigmoid(map_i)
    P_i = (σ(a(p_i − b_i)) − σ(−a·b_i)) / (σ(a(1 − b_i)) − σ(−a·b_i)),

with a fixed slope a = 5 (the paper's choice) and a learned threshold b_i per class, clipped to
[0, 1]; a is a buffer, not a parameter. Training minimises BCE of the output plus BCE of the
noisyAND probabilities (``loss``).

Encoder (authors' re-implementation, ml-jku/gapnet-pl ``tensorflow_models/architectures.py``):
3×3/2 average pool of the input; conv 32, conv 64, max pool, dropout 0.2; conv 64, pool, dropout;
conv 128, pool, dropout; conv 128, pool, dropout; 1×1 conv to 1000, dropout 0.5; 1×1 conv to the
class maps. 3×3 convolutions are zero-padded by 1 and use ReLU; the pools are 3×3/2 with
TensorFlow's 'SAME' padding (averages exclude the padding), so the maps are ⌈input/32⌉ wide.
Dropout drops whole feature maps (``Dropout2d``); the authors' TensorFlow code also drops whole maps
but with one mask shared by the batch.

Two output layers, chosen by ``head``:

- ``"noisy-and"`` (default): a dense 13→13 layer on the noisyAND probabilities gives the output
  logits (Kraus et al.'s design). 420,256 parameters for 4 channels and 13 classes, at any input
  size — the count the project specifies.
- ``"class-maps"``: the dense layer reads the flattened class maps instead, which is what the
  authors' TensorFlow graph actually builds (its FC-1 takes the ConvLayer-7 output). It fixes the
  input size (``input_size``, default 1024) and gives 593,143 parameters at 1024×1024 — the number
  the paper prints in Table 7.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.models.base import LocalizationNet, PaperDefaults, multitask_bce
from protloc.models.registry import register_model

HEADS = ("noisy-and", "class-maps")
DOWNSAMPLING = 32  # one average pool and four max pools, each 3×3/2


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) for one spatial dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[-2], kernel, stride)
    left, right = _same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    return F.max_pool2d(_pad_same(x, kernel, stride, float("-inf")), kernel, stride)


def avg_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Average over the window's pixels inside the image only, as TensorFlow's 'SAME' pooling does."""
    window_sum = F.avg_pool2d(_pad_same(x, kernel, stride, 0.0), kernel, stride)
    ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
    inside = F.avg_pool2d(_pad_same(ones, kernel, stride, 0.0), kernel, stride)
    return window_sum / inside


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class NoisyAnd(nn.Module):
    """noisyAND pooling of per-location class logits [B, C, H, W] to bag probabilities [B, C]."""

    def __init__(self, num_classes: int, slope: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("slope", torch.tensor(float(slope)))  # fixed, as in the paper
        self.threshold = nn.Parameter(torch.zeros(num_classes))  # b_i, learned

    def forward(self, class_maps: torch.Tensor) -> torch.Tensor:
        a = self.slope
        b = self.threshold.clamp(0.0, 1.0)
        p = torch.sigmoid(class_maps).mean(dim=(2, 3))
        probability = (torch.sigmoid(a * (p - b)) - torch.sigmoid(-a * b)) / (
            torch.sigmoid(a * (1 - b)) - torch.sigmoid(-a * b)
        )
        return probability.clamp(0.0, 1.0)  # exact in theory; the clamp only absorbs rounding


class ConvMIL(LocalizationNet):
    name = "conv-mil"
    paper = PaperDefaults(learning_rate=0.01, batch_size=32, dropout=0.2, input_size=1024, fixed_input_size=False)

    def __init__(
        self,
        num_classes: int = 13,
        in_channels: int = 4,
        head: str = "noisy-and",
        input_size: int | None = None,
        slope: float = 5.0,
        dropout: float | None = None,
        classifier_dropout: float = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if head not in HEADS:
            raise ProtlocError(f"conv-mil head must be one of {', '.join(HEADS)}; got {head!r}")
        self.head = head
        self.input_size = self.paper.input_size if input_size is None else int(input_size)
        if head == "class-maps":
            # The dense layer on the flattened maps fixes the input size for this instance.
            self.paper = dataclasses.replace(type(self).paper, fixed_input_size=True)
        self.dropout_rate = self.paper.dropout if dropout is None else dropout
        self.conv1 = conv3x3(in_channels, 32)
        self.conv2 = conv3x3(32, 64)
        self.conv3 = conv3x3(64, 64)
        self.conv4 = conv3x3(64, 128)
        self.conv5 = conv3x3(128, 128)
        self.conv6 = nn.Conv2d(128, 1000, kernel_size=1)
        self.conv7 = nn.Conv2d(1000, num_classes, kernel_size=1)  # the class maps
        self.dropout = nn.Dropout2d(self.dropout_rate)
        self.classifier_dropout = nn.Dropout2d(classifier_dropout)
        self.noisy_and = NoisyAnd(num_classes, slope)
        if head == "noisy-and":
            self.fc1 = nn.Linear(num_classes, num_classes)
        else:
            side = math.ceil(self.input_size / DOWNSAMPLING)
            self.fc1 = nn.Linear(side * side * num_classes, num_classes)
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location class logits [B, num_classes, ⌈H/32⌉, ⌈W/32⌉], the input of the noisyAND."""
        self.check_input(x)
        x = avg_pool_same(x)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout(max_pool_same(x))
        x = self.dropout(max_pool_same(F.relu(self.conv3(x))))
        x = self.dropout(max_pool_same(F.relu(self.conv4(x))))
        x = self.dropout(max_pool_same(F.relu(self.conv5(x))))
        x = self.classifier_dropout(F.relu(self.conv6(x)))
        return self.conv7(x)

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        class_maps = self.class_maps(x)
        noisy_and = self.noisy_and(class_maps)
        if self.head == "noisy-and":
            logits = self.fc1(noisy_and)
        else:
            logits = self.fc1(class_maps.flatten(1))
        return {"logits": logits, "noisy_and": noisy_and, "class_maps": class_maps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)["logits"]

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """BCE of the output logits plus BCE of the noisyAND probabilities.

        (The authors' TensorFlow code feeds the noisyAND probability to a logits-BCE; this is the
        cross-entropy of the probability itself, as Kraus et al. define it.)
        """
        output_loss = multitask_bce(outputs["logits"], targets)
        # Written out rather than F.binary_cross_entropy, which autocast (mixed precision) refuses;
        # logs clamped at -100 as PyTorch's BCE does.
        probability, targets = outputs["noisy_and"].float(), targets.float()
        log_p = torch.log(probability).clamp(min=-100.0)
        log_not_p = torch.log1p(-probability).clamp(min=-100.0)
        mil_loss = -(targets * log_p + (1 - targets) * log_not_p).mean(dim=0).sum()
        return output_loss + mil_loss


@register_model("conv-mil")
def conv_mil(num_classes: int = 13, in_channels: int = 4, **options) -> ConvMIL:
    return ConvMIL(num_classes=num_classes, in_channels=in_channels, **options)
