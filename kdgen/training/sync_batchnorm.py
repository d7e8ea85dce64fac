"""BatchNorm whose batch statistics are taken over every rank's share of the batch.

``nn.SyncBatchNorm`` refuses CPU tensors, and data-parallel runs on the CPU (gloo) are what kdgen
tests with, so :class:`CrossRankBatchNorm` does the same job on any device: per-channel sums over
the local batch, one ``all_reduce`` that autograd sees through (its backward sums the gradients of
every rank, as the forward summed the statistics), then the usual normalisation. A data-parallel step then
sees the statistics a single process sees on the whole batch. :func:`convert` swaps it in for
training, sharing the parameters and running buffers, and :func:`revert` puts plain BatchNorm
back, so checkpoints, the frozen teacher and BatchNorm folding never see it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _share_tensors(target: _BatchNorm, source: _BatchNorm) -> _BatchNorm:
    """``target`` holds ``source``'s parameters and running buffers (the same objects) and its train/eval mode:
    training either trains both."""
    target.weight, target.bias = source.weight, source.bias
    target.running_mean, target.running_var = source.running_mean, source.running_var
    target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    return target


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` that autograd sees through: the gradient of a sum over ranks is the sum
    of every rank's gradient (each rank's loss used the same total)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm (any dimensionality) with statistics reduced over ``group`` in training mode."""

    def __init__(self, original: _BatchNorm, group: dist.ProcessGroup | None = None) -> None:
        super().__init__(original.num_features, original.eps, original.momentum, original.affine,
                         original.track_running_stats)
        self.original_class = type(original)
        self.group = group
        _share_tensors(self, original)  # training this module trains the original's tensors

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        x = input.float()
        count = x.new_full((1,), float(input.numel() // input.shape[1]))  # filled on the device: no host copy
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _SumOverRanks.apply(stats, self.group or dist.group.WORLD)
        channels = input.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def torch_sync_batchnorm(device: torch.device) -> bool:
    """Whether ``device`` gets PyTorch's ``nn.SyncBatchNorm`` (CUDA: fused kernels, the standard) rather than
    :class:`CrossRankBatchNorm` (everywhere ``nn.SyncBatchNorm`` refuses to run, e.g. the CPU)."""
    return device.type == "cuda"


def _torch_sync(original: _BatchNorm, group: dist.ProcessGroup | None) -> nn.SyncBatchNorm:
    """An ``nn.SyncBatchNorm`` holding ``original``'s parameters and running buffers (the same objects)."""
    sync = nn.SyncBatchNorm(original.num_features, original.eps, original.momentum, original.affine,
                            original.track_running_stats, process_group=group)
    sync.original_class = type(original)  # what revert() puts back
    return _share_tensors(sync, original)


def convert(model: nn.Module, group: dist.ProcessGroup | None = None, *,
            device: torch.device = torch.device("cpu")) -> nn.Module:
    """Replace every BatchNorm of ``model`` (in place) by a cross-rank one, sharing its tensors: ``nn.SyncBatchNorm``
    on CUDA, :class:`CrossRankBatchNorm` elsewhere (:func:`torch_sync_batchnorm`); returns ``model``."""
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, (CrossRankBatchNorm, nn.SyncBatchNorm)):
            setattr(model, name, _torch_sync(child, group) if torch_sync_batchnorm(device)
                    else CrossRankBatchNorm(child, group))
        else:
            convert(child, group, device=device)
    return model


def revert(model: nn.Module) -> nn.Module:
    """Undo :func:`convert` (in place): plain BatchNorm modules holding the same tensors; returns ``model``."""
    for name, child in model.named_children():
        if isinstance(child, (CrossRankBatchNorm, nn.SyncBatchNorm)) and hasattr(child, "original_class"):
            plain = child.original_class(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats)
            setattr(model, name, _share_tensors(plain, child))
        else:
            revert(child)
    return model
