"""The model zoo: Wide-ResNets, DenseNets and ImageNet ResNets.

Parameter counts are pinned against published figures: exactly where the reference is an exact
integer (torchvision), within half a unit of the last printed digit where it was rounded.
"""

from __future__ import annotations

import pytest
import torch

from kdgen import models
from kdgen.models import build, count_parameters
from kdgen.models.densenet import DenseNet
from kdgen.models.wide_resnet import wide_resnet

CIFAR_NETS = ["wrn-16-1", "wrn-16-2", "wrn-16-4", "wrn-16-8", "wrn-40-1", "wrn-40-2", "wrn-40-4",
              "densenet-40", "densenet-bc-100"]
LARGE_CIFAR_NETS = ["wrn-28-10", "densenet-bc-190"]  # counted only: a forward pass is too slow
IMAGENET_NETS = ["resnet18", "resnet34", "resnet50"]
NEW_NAMES = CIFAR_NETS + LARGE_CIFAR_NETS + IMAGENET_NETS


# (name, classes, published millions, tolerance in millions): the tolerance is half a unit
# in the last digit the source printed.
ROUNDED_COUNTS = [
    ("wrn-40-2", 100, 2.26, 0.005),    # CRD / mdistiller, CIFAR-100
    ("wrn-40-2", 10, 2.24, 0.005),
    ("wrn-40-1", 100, 0.57, 0.005),    # CRD / mdistiller wrn_40_1
    ("wrn-16-2", 100, 0.70, 0.005),    # CRD / mdistiller wrn_16_2
    ("wrn-16-4", 10, 2.7, 0.05),       # Zagoruyko & Komodakis 2016
    ("wrn-16-8", 10, 11.0, 0.05),
    ("wrn-40-4", 10, 8.9, 0.05),
    ("wrn-28-10", 10, 36.5, 0.05),
    ("wrn-28-10", 100, 36.54, 0.005),
    ("densenet-40", 10, 1.0, 0.05),    # Huang et al., table 2
    ("densenet-bc-100", 10, 0.77, 0.005),
    ("densenet-bc-100", 100, 0.80, 0.005),
    ("densenet-bc-190", 10, 25.6, 0.05),
]


@pytest.mark.parametrize("name,num_classes,millions,tolerance", ROUNDED_COUNTS)
def test_rounded_parameter_counts(name: str, num_classes: int, millions: float, tolerance: float) -> None:
    count = count_parameters(build(name, num_classes))
    assert abs(count / 1e6 - millions) < tolerance, f"{name}: {count:,} parameters"


# Our own exact counts, so an accidental architecture change cannot hide inside a tolerance.
EXACT_CIFAR_COUNTS = [
    ("wrn-40-2", 100, 2_255_156),
    ("wrn-16-2", 100, 703_284),
    ("wrn-28-10", 10, 36_479_194),
    ("densenet-40", 10, 1_019_722),
    ("densenet-bc-100", 100, 800_032),
    ("densenet-bc-190", 10, 25_624_430),
]


@pytest.mark.parametrize("name,num_classes,expected", EXACT_CIFAR_COUNTS)
def test_exact_cifar_parameter_counts(name: str, num_classes: int, expected: int) -> None:
    assert count_parameters(build(name, num_classes)) == expected


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
])
def test_imagenet_parameter_counts_match_torchvision(name: str, expected: int) -> None:
    assert count_parameters(build(name, 1000)) == expected


def _forward(name: str, num_classes: int, in_channels: int, size: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = build(name, num_classes, in_channels=in_channels)
    with torch.no_grad():
        return model(torch.randn(2, in_channels, size, size))


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_forward_shape(name: str) -> None:
    logits = _forward(name, 10, 3, 32)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", IMAGENET_NETS)
def test_imagenet_forward_shape(name: str) -> None:
    logits = _forward(name, 7, 3, 64)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_imagenet_resnet_accepts_32x32() -> None:
    assert _forward("resnet18", 5, 3, 32).shape == (2, 5)


@pytest.mark.parametrize("name,size", [("wrn-16-1", 32), ("densenet-40", 32), ("densenet-bc-100", 32),
                                       ("resnet18", 64), ("resnet50", 64)])
def test_single_input_channel(name: str, size: int) -> None:
    assert _forward(name, 4, 1, size).shape == (2, 4)


def test_in_channels_only_changes_the_stem() -> None:
    # One fewer input channel removes exactly the stem's weights for that channel.
    for name, stem_weights_per_channel in [("wrn-16-2", 16 * 9), ("densenet-bc-100", 24 * 9),
                                           ("densenet-40", 16 * 9), ("resnet18", 64 * 49)]:
        rgb = count_parameters(build(name, 10, in_channels=3))
        gray = count_parameters(build(name, 10, in_channels=1))
        assert rgb - gray == 2 * stem_weights_per_channel, name


def test_registry_contains_new_names() -> None:
    registered = set(models.names())
    missing = sorted(set(NEW_NAMES) - registered)
    assert not missing, missing


def test_wide_resnet_helper_any_depth_and_width() -> None:
    model = wide_resnet(22, 3, num_classes=6, in_channels=2)
    # depth 22 = 6 * 3 + 4: three blocks per stage, widths 48 / 96 / 192.
    assert len(model.layers) == 9 and model.fc.in_features == 64 * 3
    assert model.stem.in_channels == 2
    with torch.no_grad():
        assert model(torch.randn(2, 2, 32, 32)).shape == (2, 6)
    # The registered names are the same architecture as the helper.
    assert count_parameters(wide_resnet(40, 2, 100)) == count_parameters(build("wrn-40-2", 100))


@pytest.mark.parametrize("depth,width", [(15, 2), (4, 1), (16, 0)])
def test_wide_resnet_rejects_bad_shapes(depth: int, width: int) -> None:
    with pytest.raises(ValueError):
        wide_resnet(depth, width, 10)


def test_densenet_rejects_bad_depth() -> None:
    with pytest.raises(ValueError):
        DenseNet(99, 12, 10, bottleneck=True)
    with pytest.raises(ValueError):
        DenseNet(41, 12, 10, bottleneck=False)


def test_initialisation() -> None:
    for name in ("wrn-16-1", "densenet-bc-100", "resnet18"):
        for module in build(name, 10).modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
