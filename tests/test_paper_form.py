"""The paper's two losses as printed, against kdgen's objective built from configs/fashion-mnist-paper-form.yaml,
and the TSD optimum behind ``tolerance.confidence`` (the knob a user can reason about).

Printed (Yang et al., AAAI 2019, as transcribed in issue 18):
  students:  lambda * CE(y, f_S) + (1 - lambda) * KL(f_T || f_S), no temperature
  patriarch: eta_p * CE(y, f) + (1 - eta_p) * [f_a1 - 1/(K-1) * sum_{k=2..K} f_ak]
Here each formula is written out by hand (explicit sorting, explicit sums), not with kdgen's losses.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdgen import arms
from kdgen.config import load_config
from kdgen.errors import ConfigError
from kdgen.tolerance import binding_eta, eta_for_confidence

PAPER_FORM = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist-paper-form.yaml"

# A hand-made batch: 3 images, 5 classes, targets not always the top class.
LOGITS = torch.tensor([[2.0, 0.5, 0.1, -1.0, 0.3], [0.2, 1.5, 1.4, 0.0, -0.5], [-0.3, 0.1, 0.0, 2.2, 0.4]])
TEACHER = torch.tensor([[1.0, 0.8, -0.2, 0.0, 0.1], [0.0, 2.0, 0.5, 0.3, 0.2], [0.5, -1.0, 0.3, 1.0, 0.9]])
TARGET = torch.tensor([0, 2, 3])


def _printed_ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        total += -(row[y] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def _printed_tsd(logits: torch.Tensor, k: int) -> float:
    total = 0.0
    for row in logits.tolist():
        f = sorted(_softmax(row), reverse=True)  # f_a1 >= f_a2 >= ...
        total += f[0] - sum(f[1:k]) / (k - 1)
    return total / len(logits)


def _printed_kl(student: torch.Tensor, teacher: torch.Tensor) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t, p_s = _softmax(t_row), _softmax(s_row)
        total += sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    return total / len(student)


def _kdgen_loss(cfg, arm: str, generation: int, teacher=None) -> float:
    objective = arms.make(arm, cfg).objective(generation)
    return float(sum(objective.terms(LOGITS, TARGET, teacher).values()))


def test_paper_form_config_says_what_its_comments_say():
    cfg = load_config(PAPER_FORM)
    assert cfg.distill.temperature == 1.0
    assert cfg.tolerance.method == "tsd" and cfg.tolerance.primary == "top1" and cfg.tolerance.apply_to == "patriarch"


def test_patriarch_objective_is_the_printed_formula_divided_by_eta_p():
    cfg = load_config(PAPER_FORM, ["data.name=synthetic", "data.num_classes=5"])
    k, eta = int(cfg.tolerance.k), cfg.tolerance.eta
    eta_p = 1.0 / (1.0 + eta)  # tolerance.eta = (1 - eta_p) / eta_p
    printed = eta_p * _printed_ce(LOGITS, TARGET) + (1.0 - eta_p) * _printed_tsd(LOGITS, k)
    assert _kdgen_loss(cfg, "tolerant", 0) * eta_p == pytest.approx(printed, rel=1e-5)
    # the strict patriarch is the printed patriarch with eta_p = 1: cross-entropy alone
    assert _kdgen_loss(cfg, "strict", 0) == pytest.approx(_printed_ce(LOGITS, TARGET), rel=1e-5)


@pytest.mark.parametrize("arm", ["strict", "tolerant"])
def test_student_objective_is_the_printed_formula(arm):
    cfg = load_config(PAPER_FORM, ["data.name=synthetic", "data.num_classes=5"])
    lam = 1.0 - cfg.distill.weight
    printed = lam * _printed_ce(LOGITS, TARGET) + (1.0 - lam) * _printed_kl(LOGITS, TEACHER)
    assert _kdgen_loss(cfg, arm, 1, TEACHER) == pytest.approx(printed, rel=1e-5)
    assert _kdgen_loss(cfg, arm, 3, TEACHER) == pytest.approx(printed, rel=1e-5)  # every later generation alike


# --- the knob: tolerance.confidence ---------------------------------------------------------------
def _converged_confidence(eta: float, k: int, primary: str, classes: int = 10) -> float:
    """Minimise CE + eta * TSD over one sample's free logits (full-batch L-BFGS): the target's probability."""
    from kdgen.losses import cross_entropy, top_score_difference

    torch.manual_seed(0)
    logits = (0.1 * torch.randn(1, classes)).requires_grad_()
    target = torch.tensor([0])
    optimizer = torch.optim.LBFGS([logits], lr=0.5, max_iter=2000, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = cross_entropy(logits, target) + eta * top_score_difference(logits, k, target=target, primary=primary)
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return float(logits.detach().softmax(-1)[0, 0])


@pytest.mark.parametrize("primary", ["target", "top1"])
@pytest.mark.parametrize("k,confidence", [(3, 0.9), (3, 0.7), (5, 0.8)])
def test_the_derived_eta_puts_the_asked_confidence_on_the_target(primary, k, confidence):
    eta = eta_for_confidence(confidence, k)
    assert _converged_confidence(eta, k, primary) == pytest.approx(confidence, abs=0.01)


@pytest.mark.parametrize("primary", ["target", "top1"])
def test_below_the_binding_strength_the_optimum_is_strict(primary):
    # eta <= (K-1)/K: the term slows the approach to p = 1 but does not stop it
    assert binding_eta(3) == pytest.approx(2 / 3)
    assert _converged_confidence(0.6, 3, primary) > 0.97


def test_confidence_sets_eta_in_the_config_and_is_recorded():
    cfg = load_config(None, ["tolerance.k=3", "tolerance.confidence=0.8"])
    assert cfg.tolerance.eta == pytest.approx(2 / (3 * 0.8))
    assert cfg.to_dict()["tolerance"]["confidence"] == 0.8
    # k: auto is resolved against the data, and eta with it
    auto = load_config(None, ["tolerance.confidence=0.8"]).tolerance.resolved(10)
    assert auto.k == 3 and auto.eta == pytest.approx(2 / (3 * 0.8))
    # a config without it serialises as before the knob existed (same config.yaml, same unit keys)
    assert "confidence" not in load_config(None).to_dict()["tolerance"]


@pytest.mark.parametrize("value", ["0.3", "1.0", "0"])
def test_confidence_outside_its_range_is_a_one_line_error(value):
    with pytest.raises(ConfigError, match="confidence"):
        load_config(None, ["tolerance.k=3", f"tolerance.confidence={value}"])
