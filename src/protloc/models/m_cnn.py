"""M-CNN, the multi-scale CNN of Godinez et al. (Bioinformatics 2017), paper Figure 8 and architectures.md.

Seven branches see the input at scales 1, 1/2, …, 1/64 (max pooling by 2^n). Each applies three
5×5 convolutions (ReLU) with 16, 16, 16, 32, 32, 32, 64 filters for n = 0…6, then max-pools by
2^(6−n) so that every branch arrives at the resolution of the coarsest one (input / 64). The 208
concatenated maps are mixed by a 1×1 convolution to 1024 maps (ReLU), max-pooled by 2, flattened,
and classified by FC 512 (ReLU) and FC 13. Xavier-uniform weights and zero biases, no dropout, as in
the authors' re-implementation (ml-jku/gapnet-pl, ``pytorch_models/models.py``).

The flattened size is (input / 128)² · 1024 — 8·8·1024 for the 1024×1024 crops the paper trained
on, which gives 34,193,853 parameters (paper Table 7). That first dense layer fixes the input size:
the model is built for ``input_size`` (default 1024; at least 128) and refuses any other size.
The learning rate is the paper's 0.01 (the authors' published config file says 0.1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError
from protloc.models.base import LocalizationNet, PaperDefaults
from protloc.models.registry import register_model

BRANCH_FILTERS = (16, 16, 16, 32, 32, 32, 64)  # branch n sees the input max-pooled by 2^n
COARSEST = 2 ** (len(BRANCH_FILTERS) - 1)  # 64: every branch ends at input / 64
COMBINED_FEATURES = 1024
HIDDEN_UNITS = 512


class Branch(nn.Module):
    """One scale: pool by 2^n, three 5×5 conv + ReLU, pool by 2^(6−n)."""

    def __init__(self, in_channels: int, filters: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(in_channels, filters, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(filters, filters, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(filters, filters, kernel_size=5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = F.max_pool2d(x, self.scale)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        to_coarsest = COARSEST // self.scale
        return F.max_pool2d(x, to_coarsest) if to_coarsest > 1 else x


class MCNN(LocalizationNet):
    name = "m-cnn"
    paper = PaperDefaults(learning_rate=0.01, batch_size=22, dropout=0.0, input_size=1024, fixed_input_size=True)

    def __init__(self, num_classes: int = 13, in_channels: int = 4, input_size: int | None = None) -> None:
        super().__init__(num_classes, in_channels)
        self.input_size = self.paper.input_size if input_size is None else int(input_size)
        if self.input_size < 2 * COARSEST:
            raise ProtlocError(
                f"m-cnn needs inputs of at least {2 * COARSEST}x{2 * COARSEST} (its coarsest branch sees input/64, "
                f"pooled once more); got input_size={self.input_size}"
            )
        self.branches = nn.ModuleList(
            Branch(in_channels, filters, scale=2**n) for n, filters in enumerate(BRANCH_FILTERS)
        )
        self.combine = nn.Conv2d(sum(BRANCH_FILTERS), COMBINED_FEATURES, kernel_size=1)
        side = self.input_size // COARSEST // 2
        self.fc1 = nn.Linear(side * side * COMBINED_FEATURES, HIDDEN_UNITS)
        self.fc2 = nn.Linear(HIDDEN_UNITS, num_classes)
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = torch.cat([branch(x) for branch in self.branches], dim=1)
        x = F.max_pool2d(F.relu(self.combine(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register_model("m-cnn")
def m_cnn(num_classes: int = 13, in_channels: int = 4, **options) -> MCNN:
    return MCNN(num_classes=num_classes, in_channels=in_channels, **options)
