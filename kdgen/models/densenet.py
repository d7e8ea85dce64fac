"""DenseNets for CIFAR (Huang et al. 2017): three dense blocks joined by transition layers.

* ``densenet-40``: the original DenseNet (L=40, k=12): each layer is BN-ReLU-conv3x3 adding
  ``k`` channels, the stem has 16 channels, transitions keep the channel count. 1.0M parameters.
* ``densenet-bc-100`` (k=12) and ``densenet-bc-190`` (k=40): bottleneck layers
  (BN-ReLU-conv1x1 to ``4k``, then BN-ReLU-conv3x3 to ``k``), a ``2k``-channel stem and
  transitions that halve the channels (compression 0.5). 0.8M and 25.6M parameters.

Transitions are BN-ReLU-conv1x1-avgpool2; the head is BN-ReLU, global average pooling and a
linear layer. Dropout (used in the paper only without data augmentation) is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.models import he_init, register


class DenseLayer(nn.Module):
    """Adds ``growth`` new feature maps and concatenates them to the input."""

    def __init__(self, in_planes: int, growth: int, bottleneck: bool) -> None:
        super().__init__()
        self.bottleneck: nn.Module | None = None
        planes = in_planes
        if bottleneck:
            # The 1x1 conv caps the 3x3 conv's input at 4k channels however wide the block gets.
            planes = 4 * growth
            self.bottleneck = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                                            nn.Conv2d(in_planes, planes, 1, bias=False))
        self.bn = nn.BatchNorm2d(planes)
        self.conv = nn.Conv2d(planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.bottleneck is None else self.bottleneck(x)
        # Not in place: without a bottleneck ``out`` is ``x``, which is also concatenated below.
        out = self.conv(F.relu(self.bn(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1-avgpool: sets the channel count and halves the resolution."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                         nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """CIFAR DenseNet of depth ``3n + 4`` (plain) or ``6n + 4`` (bottleneck) with growth rate ``growth``."""

    def __init__(self, depth: int, growth: int, num_classes: int, in_channels: int = 3,
                 bottleneck: bool = True, compression: float = 0.5) -> None:
        super().__init__()
        # Each plain layer holds one conv, each bottleneck layer two; 4 = stem + 2 transitions + fc.
        convs_per_layer = 2 if bottleneck else 1
        if (depth - 4) % (3 * convs_per_layer) != 0 or depth <= 4:
            raise ValueError(f"DenseNet depth must be {3 * convs_per_layer}n+4, got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must lie in (0, 1], got {compression}")
        layers_per_block = (depth - 4) // (3 * convs_per_layer)
        planes = 2 * growth if bottleneck else 16
        self.stem = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for block in range(3):
            for _ in range(layers_per_block):
                stages.append(DenseLayer(planes, growth, bottleneck))
                planes += growth
            if block < 2:
                out_planes = int(math.floor(planes * compression))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.stem(x))), inplace=True)
        return self.fc(torch.flatten(self.pool(out), 1))


@register("densenet-40")
def densenet40(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Original DenseNet (L=40, k=12), no bottleneck or compression."""
    return DenseNet(40, 12, num_classes, in_channels, bottleneck=False, compression=1.0)


@register("densenet-bc-100")
def densenet_bc100(num_classes: int, in_channels: int = 3) -> nn.Module:
    """DenseNet-BC (L=100, k=12)."""
    return DenseNet(100, 12, num_classes, in_channels, bottleneck=True, compression=0.5)


@register("densenet-bc-190")
def densenet_bc190(num_classes: int, in_channels: int = 3) -> nn.Module:
    """DenseNet-BC (L=190, k=40)."""
    return DenseNet(190, 40, num_classes, in_channels, bottleneck=True, compression=0.5)
