"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016): ``WRN-d-k``.

Depth ``d = 6n + 4``: a 3x3 stem with 16 channels, three groups of ``n`` pre-activation basic
blocks of widths ``16k / 32k / 64k`` (the second and third downsample by 2), then BN-ReLU,
global average pooling and a linear classifier. Shortcuts that change shape are a bare 1x1
convolution applied to the pre-activated input, as in the paper's reference code and the
CRD/mdistiller ``wrn_40_2`` (2.26M parameters for 100 classes, 2.24M for 10).
Dropout between the two convolutions of a block is 0 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.models import he_init, register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus an identity or 1x1 projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input (both branches share BN-ReLU);
        # an identity shortcut carries the raw input so the residual stream stays un-normalised.
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = F.relu(self.bn2(out), inplace=True)
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + residual


class WideResNet(nn.Module):
    """WRN of depth ``6n + 4`` and widening factor ``width``."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"Wide-ResNet width must be >= 1, got {width}")
        blocks = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate(widths):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(PreActBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        # Pre-activation blocks end on a convolution, so the head needs its own BN-ReLU.
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))), inplace=True)
        return self.fc(torch.flatten(self.pool(out), 1))


def wide_resnet(depth: int, width: int, num_classes: int, in_channels: int = 3,
                dropout: float = 0.0) -> WideResNet:
    """A ``WRN-depth-width`` for any valid depth (``6n + 4``) and widening factor."""
    return WideResNet(depth, width, num_classes, in_channels, dropout)


def _register(depth: int, width: int) -> None:
    name = f"wrn-{depth}-{width}"

    @register(name)
    def factory(num_classes: int, in_channels: int = 3) -> nn.Module:
        return wide_resnet(depth, width, num_classes, in_channels)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"Wide-ResNet-{depth}-{width} (pre-activation, no dropout)."


for _depth, _width in ((16, 1), (16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2), (40, 4)):
    _register(_depth, _width)
