"""timm's architectures as ``timm/<architecture>`` (the ``[timm]`` extra): any model ``timm.list_models()`` names.

``model.name: timm/resnet18`` builds ``timm.create_model("resnet18", num_classes=K, in_chans=C, **model.kwargs)``
for the data's classes and channels; ``model.pretrained: true`` starts the patriarch from timm's weights
(timm adapts the first convolution to C channels and drops the classifier). timm is imported on first use,
so kdgen's core never needs it (nor torchvision, which timm imports).

The probe of ``kdgen transfer`` reads timm's own pre-logits features: the input of the module
``model.get_classifier()`` returns, recorded as the model's ``feature_layer``.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from typing import Any

from torch import nn

from kdgen.errors import ConfigError
from kdgen.models import register_namespace

INSTALL = "pip install 'kdgen[timm]'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class TimmModels:
    """The ``timm/`` namespace (:class:`kdgen.models.Namespace`)."""

    @staticmethod
    @lru_cache(maxsize=1)
    def missing() -> str | None:
        try:
            import timm  # noqa: F401
        except ImportError:
            return f"timm is not installed: {INSTALL}"
        except Exception as exc:  # noqa: BLE001 - typically torchvision built for another torch
            # timm imports torchvision; PyPI's torchvision wheels need PyPI's torch, not the CPU-only wheel.
            return (f"timm cannot be imported ({_first_line(exc)}); timm needs a torchvision built for this torch: "
                    "see the guide 'Bring your own' (docs/guide/bring-your-own.md)")
        return None

    @staticmethod
    def _timm() -> Any:
        import timm

        return timm

    def architectures(self, pattern: str = "*") -> list[str]:
        names = self._timm().list_models()
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern != "*" else list(names)

    def has(self, architecture: str) -> bool:
        timm = self._timm()
        base, dot, _tag = architecture.partition(".")
        if not timm.is_model(base):
            return False
        return not dot or architecture in timm.list_pretrained(f"{base}.*")

    def weights(self, architecture: str) -> str:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(architecture)
        if cfg is None:
            return f"timm/{architecture} (no pretrained weights)"
        return cfg.hf_hub_id or cfg.url or f"timm/{architecture}"

    def build(self, architecture: str, num_classes: int, in_channels: int, *, pretrained: bool = False,
              options: dict[str, Any] | None = None) -> nn.Module:
        timm = self._timm()
        try:
            model = timm.create_model(architecture, pretrained=pretrained, num_classes=num_classes,
                                      in_chans=in_channels, **(options or {}))
        except TypeError as exc:
            raise ConfigError(f"model.kwargs {options}: timm's {architecture} does not take them "
                              f"({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - the Hub's many ways to fail: offline, no cache, no such file
            if not pretrained:
                raise
            raise ConfigError(
                f"model.pretrained: the weights {self.weights(architecture)} of timm/{architecture} are not on this "
                f"machine ({_first_line(exc)}); fetch them once where the Hub is reachable, e.g. python -c \"import "
                f"timm; timm.create_model('{architecture}', pretrained=True)\", and copy the Hugging Face cache "
                "(HF_HOME) here, or set model.pretrained=false") from None
        classifier = model.get_classifier()
        # timm's pre-logits features are the classifier's input; kdgen transfer probes them.
        model.feature_layer = next(name for name, module in model.named_modules() if module is classifier)
        return model


register_namespace("timm", TimmModels())
