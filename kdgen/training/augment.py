"""Batch augmentation and normalisation of resident uint8 images, on whatever device they live.

Done per batch on tensors (no per-sample Python, no DataLoader): a random translation with zero
padding (pad-and-crop) and an optional horizontal flip, then conversion to normalised float.
"""

from __future__ import annotations

import torch

from kdgen.data.base import AugmentSpec


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in ``[-max_shift, max_shift]``, filling with zeros."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=generator.device)
    offsets = offsets.to(images.device)
    rows = offsets[0].view(n, 1) + torch.arange(h, device=images.device).view(1, h)
    cols = offsets[1].view(n, 1) + torch.arange(w, device=images.device).view(1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing gathers every image's own crop in one op: result is (N, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)]
    return cropped.permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)


def augment(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Apply ``spec`` to a uint8 batch ``(N, C, H, W)``; returns uint8."""
    images = random_translate(images, spec.translate, generator)
    if spec.hflip:
        images = random_hflip(images, generator)
    return images


class Normalizer:
    """uint8 images -> float ``(x / 255 - mean) / std``, with the constants held on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift
