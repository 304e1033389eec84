"""GapNet-PL (Rumetshofer et al., ICLR 2019), paper Figure 1 and architectures.md.

Three convolutional blocks, each reduced to its global average; the three averages (32 + 64 + 128
= 224 features) feed a small SELU network. The encoder is fully convolutional, so any input size
works at inference. Layer names follow the authors' checkpoint: ``convN`` is ``ConvLayer-N`` and
``fcN`` is ``FC-N`` (see ``CHECKPOINT_VARIABLES``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from protloc.models.base import LocalizationNet, PaperDefaults
from protloc.models.registry import register_model

# torch parameter -> (checkpoint variable, layout of the checkpoint tensor)
CHECKPOINT_VARIABLES: dict[str, tuple[str, str]] = {}
for _i in range(1, 9):
    CHECKPOINT_VARIABLES[f"conv{_i}.weight"] = (f"ConvLayer-{_i}/W_conv", "HWIO")
    CHECKPOINT_VARIABLES[f"conv{_i}.bias"] = (f"ConvLayer-{_i}/b_conv", "O")
for _i in range(1, 4):
    CHECKPOINT_VARIABLES[f"fc{_i}.weight"] = (f"FC-{_i}/W_dense", "IO")
    CHECKPOINT_VARIABLES[f"fc{_i}.bias"] = (f"FC-{_i}/b_dense", "O")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # Symmetric zero padding of 1 at stride 2 too (the authors' explicit padding, not TF's 'SAME').
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)


def selu_init_(module: nn.Module) -> None:
    """LeCun normal initialisation for SELU networks: N(0, 1/fan_in), zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(1.0 / fan_in))
            nn.init.zeros_(layer.bias)


class GapNetPL(LocalizationNet):
    name = "gapnet-pl"
    paper = PaperDefaults(learning_rate=0.01, batch_size=40, dropout=0.3, input_size=1024, fixed_input_size=False)

    def __init__(self, num_classes: int = 13, in_channels: int = 4, dropout: float | None = None) -> None:
        super().__init__(num_classes, in_channels)
        self.dropout_rate = self.paper.dropout if dropout is None else dropout
        self.input_size = self.paper.input_size
        # block 1
        self.conv1 = conv3x3(in_channels, 32, stride=2)
        # block 2
        self.conv2 = conv3x3(32, 64, stride=2)
        self.conv3 = conv3x3(64, 64)
        self.conv4 = conv3x3(64, 64)
        self.conv5 = conv3x3(64, 64)
        # block 3
        self.conv6 = conv3x3(64, 128)
        self.conv7 = conv3x3(128, 128)
        self.conv8 = conv3x3(128, 128)
        # dense part on the concatenated global averages
        self.fc1 = nn.Linear(32 + 64 + 128, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)
        self.dropout = nn.AlphaDropout(self.dropout_rate)
        selu_init_(self)

    def blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three blocks' feature maps, each the input of one global average.

        Max pools keep a last odd row/column (ceil mode) as the authors' TensorFlow 'SAME' pooling does,
        so whole images of any size give the original network's outputs.
        """
        block1 = F.max_pool2d(F.selu(self.conv1(x)), 2, ceil_mode=True)
        x = F.selu(self.conv2(block1))
        x = F.selu(self.conv3(x))
        x = F.selu(self.conv4(x))
        x = F.selu(self.conv5(x))
        block2 = F.max_pool2d(x, 2, ceil_mode=True)
        x = F.selu(self.conv6(block2))
        x = F.selu(self.conv7(x))
        block3 = F.selu(self.conv8(x))
        return block1, block2, block3

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The dense part: 224 global-average features -> logits."""
        x = self.dropout(F.selu(self.fc1(features)))
        x = self.dropout(F.selu(self.fc2(x)))
        return self.fc3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        block1, block2, block3 = self.blocks(x)
        features = torch.cat([block.mean(dim=(2, 3)) for block in (block1, block2, block3)], dim=1)
        return self.head(features)


@register_model("gapnet-pl")
def gapnet_pl(num_classes: int = 13, in_channels: int = 4, **options) -> GapNetPL:
    return GapNetPL(num_classes=num_classes, in_channels=in_channels, **options)
