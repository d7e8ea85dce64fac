"""Small models for tiny images (digits, MNIST-sized data): an MLP and a compact CNN."""

from __future__ import annotations

import torch
from torch import nn

from kdgen.models import register


class MLP(nn.Module):
    """Two hidden layers on the image average-pooled to 8x8, so any input size works."""

    def __init__(self, num_classes: int, in_channels: int = 1, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv-conv-pool-conv-pool, then global average pooling and a linear classifier (any input size)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width), _conv_bn(width, width), nn.MaxPool2d(2),
            _conv_bn(width, 2 * width), nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("mlp")
def mlp(num_classes: int, in_channels: int = 1) -> nn.Module:
    return MLP(num_classes, in_channels)


@register("cnn")
def cnn(num_classes: int, in_channels: int = 1) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width=32)


@register("cnn-tiny")
def cnn_tiny(num_classes: int, in_channels: int = 1) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width=16)
