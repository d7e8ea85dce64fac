"""ImageNet ResNets (He et al. 2016) in the usual ``torchvision`` layout: ResNet-18/34/50.

A 7x7 stride-2 stem with max pooling, four stages of widths 64/128/256/512 (times 4 at the
output of a bottleneck), global average pooling and a linear classifier. Bottlenecks stride on
the 3x3 convolution ("ResNet v1.5"); shape-changing shortcuts are 1x1 conv + BN. For 1000
classes the parameter counts equal torchvision's: 11,689,512 / 21,797,672 / 25,557,032.
Adaptive pooling lets any input of at least 32x32 through (the trunk downsamples by 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdgen.models import he_init, register


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ImageNetResNet(nn.Module):
    """ResNet with ``blocks[i]`` blocks of type ``block`` in stage ``i``."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int, int],
                 num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_planes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers: list[nn.Module] = []
            for index in range(count):
                # The stem already downsampled by 4, so the first stage keeps its resolution.
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-18 (basic blocks 2-2-2-2)."""
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register("resnet34")
def resnet34(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-34 (basic blocks 3-4-6-3)."""
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register("resnet50")
def resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-50 (bottlenecks 3-4-6-3, stride on the 3x3 conv)."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
