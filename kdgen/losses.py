"""Losses as pure functions of logits and targets: no state, no modules, no globals.

All return a scalar tensor (batch mean) computed in float32 even when the logits are bf16, so
the loss reduction does not lose precision under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["confidence_penalty", "cross_entropy", "decoupled_kd", "decoupled_kd_terms", "distillation_loss",
           "label_smoothing_loss", "top_score_difference"]


def top_score_difference(logits: torch.Tensor, k: int, *, target: torch.Tensor | None = None,
                         primary: str = "top1") -> torch.Tensor:
    """Top score difference (TSD) of Yang et al. (AAAI 2019), averaged over the batch.

    On ``p = softmax(logits)``: ``p_(1) - mean(p_(2), ..., p_(k))`` where ``p_(j)`` is the j-th
    largest probability. Minimising it (with weight eta) narrows the gap between the primary
    class and the next ``k - 1`` classes, so the teacher keeps some confidence on a few
    plausible secondary classes: a more *tolerant* teacher.

    With ``primary="target"`` the primary score is the target class's probability and the
    secondaries are the ``k - 1`` largest non-target probabilities (needs ``target``).
    """
    num_classes = logits.shape[-1]
    if not 2 <= k <= num_classes:
        raise ValueError(f"k must be in [2, {num_classes}], got {k}")
    probs = logits.float().softmax(dim=-1)
    if primary == "top1":
        top = probs.topk(k, dim=-1).values
        first, secondary = top[:, 0], top[:, 1:]
    elif primary == "target":
        if target is None:
            raise ValueError('primary="target" needs the target labels')
        first = probs.gather(1, target.view(-1, 1)).squeeze(1)
        # Push the target to -inf-like so topk picks the largest non-target scores.
        others = probs.scatter(1, target.view(-1, 1), -1.0)
        secondary = others.topk(k - 1, dim=-1).values
    else:
        raise ValueError(f'primary must be "top1" or "target", got {primary!r}')
    return (first - secondary.mean(dim=-1)).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batchmean.

    The sum over classes and mean over the batch ("batchmean") is the true KL divergence; the
    element-wise mean (PyTorch's default "mean") divides by the class count as well and silently
    shrinks the term. The ``T^2`` factor keeps gradient magnitudes comparable across temperatures.
    The teacher side carries no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def decoupled_kd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD's two parts (Zhao et al., CVPR 2022), each ``T^2 x`` a batchmean KL at temperature ``T``.

    TCKD: KL between teacher and student *binary* distributions ``[p_target, 1 - p_target]``.
    NCKD: KL between their distributions over the non-target classes only (softmax of the other logits).
    Per sample, KL(teacher || student) over all classes equals ``TCKD + (1 - p_target^teacher) * NCKD``.
    The teacher side carries no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student = student_logits.float() / temperature
    teacher = teacher_logits.detach().float() / temperature
    n, num_classes = student.shape
    is_target = F.one_hot(target, num_classes).bool()

    def binary_log_probs(scaled: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(scaled, dim=-1)
        log_target = log_probs.gather(1, target.view(-1, 1)).squeeze(1)
        log_rest = torch.logsumexp(log_probs.masked_fill(is_target, float("-inf")), dim=-1)  # log(1 - p_target)
        return torch.stack([log_target, log_rest], dim=-1)

    def non_target_log_probs(scaled: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(scaled[~is_target].view(n, num_classes - 1), dim=-1)

    scale = temperature * temperature
    tckd = F.kl_div(binary_log_probs(student), binary_log_probs(teacher), reduction="batchmean", log_target=True)
    nckd = F.kl_div(non_target_log_probs(student), non_target_log_probs(teacher), reduction="batchmean",
                    log_target=True)
    return tckd * scale, nckd * scale


def decoupled_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, alpha: float,
                 beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD: ``alpha * TCKD + beta * NCKD`` (see :func:`decoupled_kd_terms`), without the warm-up."""
    tckd, nckd = decoupled_kd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with hard labels, in float32."""
    return F.cross_entropy(logits.float(), target)


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Cross-entropy against ``(1 - eps) * onehot + eps / C`` (Szegedy et al. 2016).

    Used *instead of* plain cross-entropy by the ``label-smoothing`` tolerance method.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, target.view(-1, 1)).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - epsilon) * nll + epsilon * uniform).mean()


def confidence_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy of ``softmax(logits)``, batch mean (Pereyra et al. 2017).

    Adding ``beta * confidence_penalty`` to the loss rewards higher-entropy (less confident)
    predictions.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return (log_probs.exp() * log_probs).sum(dim=-1).mean()
