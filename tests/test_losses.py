"""Golden values computed by hand on small tensors, and the direction of TSD's gradient."""

import math

import pytest
import torch

from kdgen.losses import (confidence_penalty, cross_entropy, distillation_loss, label_smoothing_loss,
                          top_score_difference)

PROBS = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]])
LOGITS = PROBS.log()  # softmax(log p) == p exactly


def test_tsd_top1_golden_values():
    # row 0: 0.5 - (0.25 + 0.15) / 2 = 0.3 ; row 1: 0.4 - (0.3 + 0.2) / 2 = 0.15
    assert top_score_difference(LOGITS, 3).item() == pytest.approx((0.3 + 0.15) / 2, abs=1e-6)
    # k = 2: 0.5 - 0.25 and 0.4 - 0.3
    assert top_score_difference(LOGITS, 2).item() == pytest.approx((0.25 + 0.1) / 2, abs=1e-6)
    # k = C: the mean of all other classes
    assert top_score_difference(LOGITS[:1], 4).item() == pytest.approx(0.5 - 0.5 / 3, abs=1e-6)


def test_tsd_target_primary_golden_values():
    target = torch.tensor([1, 3])
    # row 0: target 0.25, two largest others 0.5 and 0.15 -> 0.25 - 0.325 = -0.075
    # row 1: target 0.4, two largest others 0.3 and 0.2 -> 0.4 - 0.25 = 0.15
    value = top_score_difference(LOGITS, 3, target=target, primary="target")
    assert value.item() == pytest.approx((-0.075 + 0.15) / 2, abs=1e-6)


def test_tsd_rejects_bad_k_and_primary():
    with pytest.raises(ValueError):
        top_score_difference(LOGITS, 1)
    with pytest.raises(ValueError):
        top_score_difference(LOGITS, 5)
    with pytest.raises(ValueError):
        top_score_difference(LOGITS, 2, primary="target")
    with pytest.raises(ValueError):
        top_score_difference(LOGITS, 2, primary="first")


def test_tsd_gradient_lowers_top1_and_raises_secondaries():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0, -2.0]], requires_grad=True)
    before = logits.softmax(-1).detach()
    top_score_difference(logits, 3).backward()
    with torch.no_grad():
        after = (logits - 0.5 * logits.grad).softmax(-1)
    assert after[0, 0] < before[0, 0]  # the top-1 score goes down
    assert after[0, 1] > before[0, 1] and after[0, 2] > before[0, 2]  # the next k-1 go up


def test_distillation_loss_is_batchmean_kl_times_t_squared():
    teacher_p = torch.tensor([[0.5, 0.5], [0.3, 0.7]])
    student_p = torch.tensor([[0.25, 0.75], [0.3, 0.7]])
    kl_row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    for temperature in (1.0, 2.0, 4.0):
        # logits T*log(p) soften back to exactly p at temperature T
        loss = distillation_loss(temperature * student_p.log(), temperature * teacher_p.log(), temperature)
        # batchmean: the sum over classes, averaged over the 2 rows (row 1 has KL 0), times T^2
        assert loss.item() == pytest.approx(temperature ** 2 * kl_row0 / 2, rel=1e-5)
    # the element-wise mean would divide by 4 instead of 2: make sure that is not what we compute
    assert distillation_loss(student_p.log(), teacher_p.log(), 1.0).item() != pytest.approx(kl_row0 / 4, rel=1e-3)


def test_distillation_loss_zero_when_equal_and_no_teacher_gradient():
    teacher = torch.randn(4, 6, requires_grad=True)
    student = teacher.detach().clone().requires_grad_(True)
    loss = distillation_loss(student, teacher, 3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (distillation_loss(student * 2, teacher, 3.0)).backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError):
        distillation_loss(student, teacher, 0.0)


def test_label_smoothing_and_confidence_penalty_golden():
    target = torch.tensor([0])
    p = PROBS[:1]
    expected = 0.9 * -math.log(0.5) + 0.1 * -sum(math.log(x) for x in p[0].tolist()) / 4
    assert label_smoothing_loss(p.log(), target, 0.1).item() == pytest.approx(expected, rel=1e-6)
    assert label_smoothing_loss(p.log(), target, 0.0).item() == pytest.approx(cross_entropy(p.log(), target).item())
    neg_entropy = sum(x * math.log(x) for x in p[0].tolist())
    assert confidence_penalty(p.log()).item() == pytest.approx(neg_entropy, rel=1e-6)


def test_losses_accept_bf16_logits_and_return_float32():
    logits = LOGITS.to(torch.bfloat16)
    assert top_score_difference(logits, 2).dtype == torch.float32
    assert distillation_loss(logits, logits, 2.0).dtype == torch.float32
