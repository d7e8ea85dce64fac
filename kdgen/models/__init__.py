"""A registry of classifiers: ``build(name, num_classes, in_channels)`` returns a fresh ``nn.Module``.

Every model maps ``(N, in_channels, H, W)`` float images to ``(N, num_classes)`` logits and
accepts any input size its architecture allows (global average pooling before the classifier).
Register new ones with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from kdgen import plugins

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(num_classes, in_channels) -> nn.Module`` under ``name``."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        return factory

    return wrap


def _import_models() -> None:
    """Import every module of this package (each registers its models), then the plug-ins (kdgen.plugins)."""
    plugins.import_submodules(__name__, __path__)
    plugins.load()


def names() -> list[str]:
    """Sorted names of the registered models."""
    _import_models()
    return sorted(_MODELS)


def build(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model ``name`` with ``num_classes`` outputs for ``in_channels`` inputs."""
    _import_models()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)


def he_init(model: nn.Module) -> None:
    """He-normal convolutions (fan_out, as in ResNet/WRN/DenseNet), identity BatchNorm, zero Linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Profile:
    """What a model costs: trainable parameters, and forward FLOPs per image at ``image_shape`` (C, H, W)."""

    name: str
    params: int
    flops: int
    image_shape: tuple[int, ...]


def profile(model: nn.Module, image_shape: Sequence[int], name: str = "") -> Profile:
    """Parameters and forward FLOPs of one image of ``image_shape`` through ``model`` (eval mode, no gradients).

    FLOPs are PyTorch's count (:class:`torch.utils.flop_counter.FlopCounterMode`): two per multiply-add of the
    convolutions and matrix products, the layers that dominate; element-wise layers are not counted. Raises what
    the model raises when it cannot take such images.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    # Two images: a batch of one is refused by BatchNorm in train mode and by some models' reshapes.
    example = torch.zeros(2, *image_shape, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        model.train(was_training)
    return Profile(name, count_parameters(model), counter.get_total_flops() // 2, tuple(int(s) for s in image_shape))


__all__ = ["Profile", "build", "count_parameters", "he_init", "names", "profile", "register"]
