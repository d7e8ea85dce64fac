"""Evaluation: predicted probabilities in large batches, and top-1 / top-5 / NLL / ECE."""

from __future__ import annotations

import torch
from torch import nn

from kdgen.augment import Normalizer
from kdgen.batches import eval_batches
from kdgen.data.base import AnySplit
from kdgen.device import memory_format, resolve_precision
from kdgen.fast import fold_batchnorm

ECE_BINS = 15


@torch.inference_mode()
def predict_probs(model: nn.Module, split: AnySplit, normalizer: Normalizer, *, batch_size: int = 1024,
                  precision: str = "fp32", channels_last: bool = False, workers: int = 0) -> torch.Tensor:
    """Softmax outputs ``(N, C)`` in float32 on the CPU, with the model in eval mode.

    ``channels_last`` feeds NHWC images (as the training loop does with ``train.channels_last``).
    The model runs as a BatchNorm-folded copy (:func:`kdgen.fast.fold_batchnorm`: the same function,
    fewer passes over the activations). Its previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    folded = fold_batchnorm(model)
    layout = memory_format(channels_last)
    outputs = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=resolve_precision(precision, device) == "bf16")
    for images, _ in eval_batches(split, batch_size, device, workers):
        with autocast:
            logits = folded(normalizer(images).contiguous(memory_format=layout))
        outputs.append(logits.float().softmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(outputs)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin b holds confidences in (edges[b], edges[b+1]]; bucketize puts 0 in bin 0.
    bin_index = (torch.bucketize(confidence.double(), edges, right=False) - 1).clamp(0, bins - 1)
    total = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, torch.ones_like(correct))
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, confidence.double())
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, correct)
    return float((conf_sum - acc_sum).abs().sum() / max(len(labels), 1))


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1 (percent), nll (nats), ece (fraction), conf (mean top-1 probability: how strict the model
    is; a tolerant teacher's is lower) and, with more than 10 classes, top5 (percent)."""
    labels = labels.cpu()
    metrics = {
        "top1": 100.0 * float((probs.argmax(dim=1) == labels).double().mean()),
        "nll": float(-probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().mean()),
        "ece": expected_calibration_error(probs, labels),
        "conf": float(probs.max(dim=1).values.double().mean()),
    }
    if probs.shape[1] > 10:
        top5 = probs.topk(5, dim=1).indices
        metrics["top5"] = 100.0 * float((top5 == labels.view(-1, 1)).any(dim=1).double().mean())
    return metrics
