"""GapNet-PL (Rumetshofer et al., ICLR 2019) in plain PyTorch, for the bioimage.io package.

A bioimage.io package carries the architecture of its ``pytorch_state_dict`` weights as one source
file that must import nothing but torch. This file is that source: the same layers and parameter
names as ``protloc.models.gapnet_pl.GapNetPL`` (the tests check that both give the same logits).
Input: a batch normalised per channel to zero mean and unit variance, channels nucleus, microtubules,
ER, protein; output: one logit per class.
"""

import torch
from torch import nn
from torch.nn import functional as F


class GapNetPL(nn.Module):
    def __init__(self, num_classes: int = 13, in_channels: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv5 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv6 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv7 = nn.Conv2d(128, 128, 3, padding=1)
        self.conv8 = nn.Conv2d(128, 128, 3, padding=1)
        self.fc1 = nn.Linear(32 + 64 + 128, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block1 = F.max_pool2d(F.selu(self.conv1(x)), 2, ceil_mode=True)
        x = F.selu(self.conv5(F.selu(self.conv4(F.selu(self.conv3(F.selu(self.conv2(block1))))))))
        block2 = F.max_pool2d(x, 2, ceil_mode=True)
        block3 = F.selu(self.conv8(F.selu(self.conv7(F.selu(self.conv6(block2))))))
        features = torch.cat([block.mean(dim=(2, 3)) for block in (block1, block2, block3)], dim=1)
        return self.fc3(F.selu(self.fc2(F.selu(self.fc1(features)))))
