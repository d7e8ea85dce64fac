"""Where and in which precision to run: ``auto`` settings resolved against the hardware."""

from __future__ import annotations

import torch

from kdgen.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The activation (and weight) layout ``train.channels_last`` asks for."""
    return torch.channels_last if channels_last else torch.contiguous_format


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where bf16 autocast is fast on ``device``, else ``fp32``."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    cpu = torch.cpu
    fast_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if device.type == "cpu" and fast_bf16 else "fp32"
