"""DenseNet-121 (Huang et al., CVPR 2017), paper Table 5 and architectures.md.

The standard DenseNet-BC layout with growth rate 32, bottleneck width 4·32 and compression 0.5:
a 7×7/2 stem, four dense blocks of 6, 12, 24 and 16 layers joined by transitions, then BN, ReLU,
global average pooling and one linear layer. Batch normalisation and ReLU come before every
convolution; convolutions have no bias (the BN after them carries it). The stem takes the four
channels directly. Dropout 0.2 after every dense layer is the authors' configuration
(ml-jku/gapnet-pl, ``pytorch_models/configs/densenet.json``), as is the initialisation (He normal
for convolutions, BN weight 1 and bias 0, linear bias 0).

4 input channels and 13 outputs give 6,970,317 parameters, as in the paper's Table 7; the network
is fully convolutional up to the global average, so the count does not depend on the input size
and any input of at least 32×32 works (training on a batch of one needs 64×64, where the last
batch norm still sees more than one value per channel).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.models.base import LocalizationNet, PaperDefaults
from protloc.models.registry import register_model

GROWTH_RATE = 32
BOTTLENECK_WIDTH = 4 * GROWTH_RATE
BLOCK_LAYERS = (6, 12, 24, 16)
STEM_FEATURES = 64
COMPRESSION = 0.5
MIN_INPUT = 32  # the network downsamples by 32 before the global average


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (to 4·k) then BN-ReLU-3×3 conv (to k); its k maps join all earlier ones."""

    def __init__(self, in_features: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_features)
        self.conv1 = nn.Conv2d(in_features, BOTTLENECK_WIDTH, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(BOTTLENECK_WIDTH)
        self.conv2 = nn.Conv2d(BOTTLENECK_WIDTH, GROWTH_RATE, kernel_size=3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(F.relu(self.norm2(new)))
        return torch.cat([x, self.dropout(new)], dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, in_features: int, dropout: float) -> None:
        super().__init__(*(DenseLayer(in_features + i * GROWTH_RATE, dropout) for i in range(num_layers)))
        self.out_features = in_features + num_layers * GROWTH_RATE


class Transition(nn.Module):
    """BN-ReLU-1×1 conv halving the feature maps (compression 0.5), then 2×2 average pooling."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = int(in_features * COMPRESSION)
        self.norm = nn.BatchNorm2d(in_features)
        self.conv = nn.Conv2d(in_features, self.out_features, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), kernel_size=2, stride=2)


class DenseNet121(LocalizationNet):
    name = "densenet-121"
    paper = PaperDefaults(learning_rate=0.1, batch_size=3, dropout=0.2, input_size=1024, fixed_input_size=False)

    def __init__(self, num_classes: int = 13, in_channels: int = 4, dropout: float | None = None) -> None:
        super().__init__(num_classes, in_channels)
        self.dropout_rate = self.paper.dropout if dropout is None else dropout
        self.input_size = self.paper.input_size
        # stem
        self.conv0 = nn.Conv2d(in_channels, STEM_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)
        self.norm0 = nn.BatchNorm2d(STEM_FEATURES)
        # dense blocks 1-4 with transitions 1-3 between them
        self.block1 = DenseBlock(BLOCK_LAYERS[0], STEM_FEATURES, self.dropout_rate)
        self.transition1 = Transition(self.block1.out_features)
        self.block2 = DenseBlock(BLOCK_LAYERS[1], self.transition1.out_features, self.dropout_rate)
        self.transition2 = Transition(self.block2.out_features)
        self.block3 = DenseBlock(BLOCK_LAYERS[2], self.transition2.out_features, self.dropout_rate)
        self.transition3 = Transition(self.block3.out_features)
        self.block4 = DenseBlock(BLOCK_LAYERS[3], self.transition3.out_features, self.dropout_rate)
        # classification layer
        self.norm5 = nn.BatchNorm2d(self.block4.out_features)
        self.classifier = nn.Linear(self.block4.out_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight)
            elif isinstance(layer, nn.BatchNorm2d):
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.bias)  # weight: PyTorch's default, as in the authors' code

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1024 feature maps (after BN and ReLU), the input of the global average."""
        x = F.max_pool2d(F.relu(self.norm0(self.conv0(x))), kernel_size=3, stride=2, padding=1)
        x = self.transition1(self.block1(x))
        x = self.transition2(self.block2(x))
        x = self.transition3(self.block3(x))
        x = self.block4(x)
        return F.relu(self.norm5(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if min(x.shape[-2:]) < MIN_INPUT:
            raise ProtlocError(
                f"densenet-121 needs inputs of at least {MIN_INPUT}x{MIN_INPUT}; got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@register_model("densenet-121")
def densenet_121(num_classes: int = 13, in_channels: int = 4, **options) -> DenseNet121:
    return DenseNet121(num_classes=num_classes, in_channels=in_channels, **options)
