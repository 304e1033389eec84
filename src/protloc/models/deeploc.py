"""DeepLoc (Kraus et al., Mol. Syst. Biol. 2017) as adapted in the paper's Table 6.

Eight 3×3 convolutions with 32, 32 | 64, 64 | 96, 96, 96, 96 filters, each block followed by 2×2/2
max pooling; the maps are flattened and classified by FC 128, FC 128 and FC 13. The paper's
adaptations of the original (64×64 yeast-cell crops, 64…256 filters, FC 512): fewer filters and
units for 1024×1024 inputs, and SELU with SELU initialisation instead of ReLU with batch
normalisation. Dropout in the dense part is alpha dropout (SELU) at 0.3, the authors' configuration
(ml-jku/gapnet-pl, ``tensorflow_models/configs/deeploc.json``); convolutions are zero-padded by 1,
pooling rounds up (TensorFlow's 'SAME'). Layer names follow the authors' TensorFlow graph
(``convN`` = ``ConvLayer-N``, ``fcN`` = ``FC-N``).

The flattened size is ⌈input/8⌉²·96 = 128·128·96 for a 1024×1024 input, so the first dense layer
alone holds 201,326,720 weights and biases. This layout gives 201,715,277 parameters for 4
channels and 13 outputs, the count of the authors' code; the paper's Table 7 prints 201,716,967
(1,690 more, unexplained by any layer of the published code). The dense layer fixes the input
size: the model is built for ``input_size`` (default 1024) and refuses any other size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.models.base import LocalizationNet, PaperDefaults
from protloc.models.gapnet_pl import selu_init_
from protloc.models.registry import register_model

HIDDEN_UNITS = 128
POOLINGS = 3


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def pool(x: torch.Tensor) -> torch.Tensor:
    # ceil_mode matches TensorFlow's 'SAME' 2×2/2 pooling on odd sizes
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class DeepLoc(LocalizationNet):
    name = "deeploc"
    paper = PaperDefaults(learning_rate=0.001, batch_size=2, dropout=0.3, input_size=1024, fixed_input_size=True)

    def __init__(
        self,
        num_classes: int = 13,
        in_channels: int = 4,
        input_size: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.input_size = self.paper.input_size if input_size is None else int(input_size)
        if self.input_size < 2**POOLINGS:
            raise ProtlocError(f"deeploc needs inputs of at least 8x8; got input_size={self.input_size}")
        self.dropout_rate = self.paper.dropout if dropout is None else dropout
        # block 1
        self.conv1 = conv3x3(in_channels, 32)
        self.conv2 = conv3x3(32, 32)
        # block 2
        self.conv3 = conv3x3(32, 64)
        self.conv4 = conv3x3(64, 64)
        # block 3
        self.conv5 = conv3x3(64, 96)
        self.conv6 = conv3x3(96, 96)
        self.conv7 = conv3x3(96, 96)
        self.conv8 = conv3x3(96, 96)
        # dense part on the flattened maps
        side = -(-self.input_size // 2**POOLINGS)  # ceil(input / 8)
        self.fc1 = nn.Linear(side * side * 96, HIDDEN_UNITS)
        self.fc2 = nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS)
        self.fc3 = nn.Linear(HIDDEN_UNITS, num_classes)
        self.dropout = nn.AlphaDropout(self.dropout_rate)
        selu_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = pool(F.selu(self.conv2(F.selu(self.conv1(x)))))
        x = pool(F.selu(self.conv4(F.selu(self.conv3(x)))))
        x = F.selu(self.conv5(x))
        x = F.selu(self.conv6(x))
        x = F.selu(self.conv7(x))
        x = pool(F.selu(self.conv8(x)))
        x = self.dropout(F.selu(self.fc1(x.flatten(1))))
        x = self.dropout(F.selu(self.fc2(x)))
        return self.fc3(x)


@register_model("deeploc")
def deeploc(num_classes: int = 13, in_channels: int = 4, **options) -> DeepLoc:
    return DeepLoc(num_classes=num_classes, in_channels=in_channels, **options)
