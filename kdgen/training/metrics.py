"""Evaluation: predicted probabilities in large batches, and top-1 / top-5 / NLL / ECE."""

from __future__ import annotations

import torch
from torch import nn

from kdgen.data.base import AnySplit
from kdgen.training.augment import Normalizer
from kdgen.training.batches import eval_batches
from kdgen.training.fast import fold_batchnorm
from kdgen.training.runtime import autocast, memory_format, resolve_precision

ECE_BINS = 15


@torch.inference_mode()
def predict_probs(model: nn.Module, split: AnySplit, normalizer: Normalizer, *, batch_size: int = 1024,
                  precision: str = "fp32", channels_last: bool = False, workers: int = 0) -> torch.Tensor:
    """Softmax outputs ``(N, C)`` in float32 on the CPU, with the model in eval mode.

    ``channels_last`` feeds NHWC images (as the training loop does with ``runtime.channels_last``).
    The model runs as a BatchNorm-folded copy (:func:`kdgen.training.fast.fold_batchnorm`: the same function,
    fewer passes over the activations). Its previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    folded = fold_batchnorm(model)
    layout = memory_format(channels_last)
    outputs = []
    for images, _ in eval_batches(split, batch_size, device, workers):
        with autocast(device.type, resolve_precision(precision, device)):
            logits = folded(normalizer(images).contiguous(memory_format=layout))
        outputs.append(logits.float().softmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(outputs)


def _confidence_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> tuple[torch.Tensor, ...]:
    """Per equal-width confidence bin: image count, sum of confidences and number correct (float64)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.to(predicted.device)).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin b holds confidences in (edges[b], edges[b+1]]; bucketize puts 0 in bin 0.
    bin_index = (torch.bucketize(confidence.double(), edges, right=False) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, torch.ones_like(correct))
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, confidence.double())
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, bin_index, correct)
    return count, conf_sum, acc_sum


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017)."""
    _, conf_sum, acc_sum = _confidence_bins(probs, labels, bins)
    return float((conf_sum - acc_sum).abs().sum() / max(len(labels), 1))


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin (``bins`` equal widths over [0, 1]): how many images, their mean confidence
    and accuracy. Enough to draw a reliability diagram and a confidence histogram, pooled over seeds."""
    count, conf_sum, acc_sum = _confidence_bins(probs, labels, bins)
    safe = count.clamp_min(1)
    return {"count": count.tolist(), "confidence": (conf_sum / safe).tolist(), "accuracy": (acc_sum / safe).tolist()}


def rank_mass(probs: torch.Tensor) -> list[float]:
    """The mean probability at each rank (``[mean p_(1), mean p_(2), ...]``, float64): enough to give
    :func:`secondary_mass` for any K without the model (a unit cache keeps it, so a run with another K reuses a unit)."""
    # float64 before summing, whatever the input's dtype: the same reduction for float32 and float64 probabilities.
    ranked = probs.sort(dim=1, descending=True).values.double()
    return (ranked.sum(dim=0) / max(len(probs), 1)).tolist()


def secondary_mass(ranks: list[float], k: int) -> float:
    """Mean probability on ranks 2..k, from :func:`rank_mass` (k clipped to 2..classes)."""
    k = max(2, min(k, len(ranks)))
    return float(sum(ranks[1:k]))


def secondary_information(probs: torch.Tensor, labels: torch.Tensor, k: int,
                          groups: list[list[int]] | None = None) -> dict[str, float]:
    """What a model says beyond its top-1 choice: the information a teacher passes on.

    - ``entropy``: mean entropy of the predicted distribution, in nats.
    - ``secondary_mass``: mean probability on ranks 2..k (the classes TSD keeps alive).
    - with ``groups`` (lists of class indices, e.g. garment families or CIFAR-100 superclasses),
      over the images whose true class has at least one group-mate:
      ``semantic``: share whose highest-scoring class other than the true one is a group-mate;
      ``semantic_mass``: mean share of the non-target probability that lies on group-mates.
      Chance for ``semantic`` is (group size - 1) / (classes - 1) per image.
    """
    probs = probs.double()
    labels = labels.cpu()
    num_classes = probs.shape[1]
    k = max(2, min(k, num_classes))
    metrics = {
        "entropy": float(-(probs * probs.clamp_min(1e-30).log()).sum(dim=1).mean()),
        # From the per-rank means, exactly as a run with another K recomputes it for a reused unit.
        "secondary_mass": secondary_mass(rank_mass(probs), k),
    }
    if groups:
        mates = torch.zeros(num_classes, num_classes, dtype=torch.bool)  # mates[i, j]: j shares i's group, j != i
        for group in groups:
            index = torch.tensor(group)
            mates[index.view(-1, 1), index.view(1, -1)] = True
        mates.fill_diagonal_(False)
        row_mates = mates[labels]
        eligible = row_mates.any(dim=1)
        if bool(eligible.any()):
            others = probs.scatter(1, labels.view(-1, 1), -1.0)
            runner_up = others.argmax(dim=1)
            in_group = row_mates.gather(1, runner_up.view(-1, 1)).squeeze(1)
            # Summed, not 1 - p_target: that difference rounds to 0 for a confident model while the
            # group-mates' mass does not, and the ratio would explode.
            off_target = others.clamp_min(0.0).sum(dim=1)
            mate_mass = (probs * row_mates).sum(dim=1) / off_target.clamp_min(1e-300)
            metrics["semantic"] = 100.0 * float(in_group[eligible].double().mean())
            has_mass = eligible & (off_target > 0)
            if bool(has_mass.any()):
                metrics["semantic_mass"] = float(mate_mass[has_mass].mean())
    return metrics


def soft_confusion(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[float]]:
    """``M[i][j]``: the mean probability on class j over images of true class i (rows of absent classes are 0).

    Off the diagonal, this is where a model puts its secondary confidence: the paper's "tolerance".
    """
    labels = labels.cpu()
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, labels, probs.double())
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double().view(-1, 1)
    return (sums / counts).tolist()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, k: int = 5,
                           groups: list[list[int]] | None = None) -> dict[str, float]:
    """top1 (percent), nll (nats), ece (fraction), conf (mean top-1 probability: how strict the model
    is; a tolerant teacher's is lower), with more than 10 classes top5 (percent), and the
    secondary information of :func:`secondary_information` (``k`` ranks, semantic ``groups``)."""
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
    metrics.update(secondary_information(probs, labels, k, groups))
    return metrics
