"""A registry of classifiers: ``build(name, num_classes, in_channels)`` returns a fresh ``nn.Module``.

Every model maps ``(N, in_channels, H, W)`` float images to ``(N, num_classes)`` logits and
accepts any input size its architecture allows (global average pooling before the classifier).
Register new ones with :func:`register`.

Whole families of another library are a *namespace*: ``timm/<architecture>`` builds any of timm's
architectures (:mod:`kdgen.models.timm_zoo`). A namespace builds by name, takes the library's own options
(``model.kwargs``) and may start from the library's pretrained weights; :func:`register_namespace` adds one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from torch import nn

from kdgen import plugins

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


class Namespace(Protocol):
    """Builds the models ``PREFIX/<architecture>`` of another library (e.g. timm); see :mod:`kdgen.models.timm_zoo`."""

    def missing(self) -> str | None:
        """Why the library cannot be used here (one line, with the install command), or None when it can."""

    def architectures(self, pattern: str = "*") -> list[str]:
        """The library's architecture names matching ``pattern`` (shell-style wildcards)."""

    def has(self, architecture: str) -> bool:
        """Whether ``architecture`` (possibly with a weights tag, ``arch.tag``) names one of the library's models."""

    def build(self, architecture: str, num_classes: int, in_channels: int, *, pretrained: bool = False,
              options: dict[str, Any] | None = None) -> nn.Module:
        """A new model; ``pretrained`` starts from the library's weights, ``options`` are its own keyword arguments."""

    def weights(self, architecture: str) -> str:
        """The name of the pretrained weights ``build(..., pretrained=True)`` loads (for unit keys and messages)."""


_NAMESPACES: dict[str, Namespace] = {}


def register_namespace(prefix: str, namespace: Namespace) -> None:
    """Make ``PREFIX/<architecture>`` build through ``namespace``."""
    if prefix in _NAMESPACES and _NAMESPACES[prefix] is not namespace:
        raise ValueError(f"model namespace {prefix!r} is registered twice")
    _NAMESPACES[prefix] = namespace


def namespace(prefix: str) -> Namespace:
    """The namespace registered as ``prefix`` (e.g. ``"timm"``); ``KeyError`` if none is."""
    _import_models()
    return _NAMESPACES[prefix]


def split_name(name: str) -> tuple[Namespace, str] | None:
    """(namespace, architecture) of a namespaced name like ``timm/resnet18``; None for a registry name."""
    prefix, slash, architecture = name.partition("/")
    if not slash:
        return None
    _import_models()
    namespace = _NAMESPACES.get(prefix)
    return (namespace, architecture) if namespace is not None else None


def check_name(name: str) -> str:
    """``name`` if it names a model kdgen can build here, else ``ValueError`` with one line saying why
    (did-you-mean for close names, the install command for a namespace whose library is missing)."""
    found = split_name(name)
    if found is not None:
        namespace, architecture = found
        reason = namespace.missing()
        if reason is not None:
            raise ValueError(f"model {name!r}: {reason}")
        if not namespace.has(architecture):
            prefix = name.partition("/")[0]
            close = difflib.get_close_matches(architecture, namespace.architectures(), n=3)
            hint = f" (did you mean {', '.join(f'{prefix}/{c}' for c in close)}?)" if close else ""
            raise ValueError(f"unknown model {name!r}{hint}; see `kdgen models --{prefix} PATTERN`")
        return name
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; see `kdgen models`")
    return name


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


def build(name: str, num_classes: int, in_channels: int = 3, *, pretrained: bool = False,
          options: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model ``name`` with ``num_classes`` outputs for ``in_channels`` inputs.

    ``name`` is a registered model or a namespaced one (``timm/resnet18``). ``pretrained`` (start from the
    library's weights) and ``options`` (the library's own keyword arguments) are for namespaced models; kdgen's
    own architectures are fixed and take neither.
    """
    _import_models()
    found = split_name(name)
    if found is not None:
        namespace, architecture = found
        return namespace.build(architecture, num_classes, in_channels, pretrained=pretrained, options=options)
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    if pretrained or options:
        raise ValueError(f"model {name!r} is one of kdgen's own architectures: it takes no options and has no "
                         "pretrained weights (model.kwargs and model.pretrained are for timm/<architecture>)")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)


def weights_of(name: str) -> str:
    """The pretrained weights ``build(name, ..., pretrained=True)`` loads, e.g. ``timm/resnet18.a1_in1k``."""
    found = split_name(name)
    if found is None:
        raise ValueError(f"model {name!r} has no pretrained weights")
    namespace, architecture = found
    return namespace.weights(architecture)


def namespaced(name: str) -> bool:
    """Whether ``name`` is built by a namespace (``timm/...``) rather than kdgen's registry."""
    return split_name(name) is not None


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


__all__ = ["Namespace", "Profile", "build", "check_name", "count_parameters", "he_init", "names", "namespace",
           "namespaced", "profile",
           "register", "register_namespace", "split_name", "weights_of"]
