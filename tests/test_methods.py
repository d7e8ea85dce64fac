"""The method seam (kdgen.methods) and decoupled KD: golden values, the KD identity, config, warm-up, a method
with parameters and features of its own, and dkd runs from the command line and the API."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from kdgen import arms, losses
from kdgen.config import load_config
from kdgen.errors import ConfigError
from kdgen.methods import GenerationLoss, Step, StudentMethod
from kdgen.methods.dkd import DecoupledKD
from kdgen.models import build
from kdgen.running.unit_cache import unit_settings
from kdgen.training.loop import TrainHooks, freeze_teacher, train_generation
from kdgen.training.objective import GenerationObjective

STUDENT = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]])
TEACHER = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -0.5, 2.5], [0.5, 1.5, 0.0, -0.5]])
TARGET = torch.tensor([0, 3, 1])


def by_hand(student, teacher, target, temperature):
    """TCKD and NCKD written out with Python loops and math.exp/log, from the DKD paper's definitions."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), target.tolist()):
        def softmax(row):
            exps = [math.exp(v / temperature) for v in row]
            return [e / sum(exps) for e in exps]
        p_s, p_t = softmax(s_row), softmax(t_row)
        b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
        tckd += sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
        others_s = softmax([v for j, v in enumerate(s_row) if j != y])
        others_t = softmax([v for j, v in enumerate(t_row) if j != y])
        nckd += sum(t * math.log(t / s) for t, s in zip(others_t, others_s))
    n = len(target)
    return tckd / n * temperature ** 2, nckd / n * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_decoupled_kd_matches_the_definitions_computed_by_hand(temperature):
    tckd, nckd = losses.decoupled_kd_terms(STUDENT, TEACHER, TARGET, temperature)
    want_tckd, want_nckd = by_hand(STUDENT, TEACHER, TARGET, temperature)
    assert tckd.item() == pytest.approx(want_tckd, rel=1e-5) and nckd.item() == pytest.approx(want_nckd, rel=1e-5)
    combined = losses.decoupled_kd(STUDENT, TEACHER, TARGET, alpha=1.0, beta=8.0, temperature=temperature)
    assert combined.item() == pytest.approx(want_tckd + 8.0 * want_nckd, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_classical_kd_is_tckd_plus_nckd_weighted_by_the_teachers_non_target_mass(temperature):
    """Per sample, KL(teacher || student) = TCKD + (1 - p_target^teacher) NCKD: the reason for decoupling."""
    for i in range(len(TARGET)):
        s, t, y = STUDENT[i:i + 1], TEACHER[i:i + 1], TARGET[i:i + 1]
        kd = losses.distillation_loss(s, t, temperature)
        tckd, nckd = losses.decoupled_kd_terms(s, t, y, temperature)
        p_target = F.softmax(t / temperature, dim=-1)[0, y].item()
        # float32 throughout: CPUs' vector exp/log differ in the last bits (1.1e-5 relative seen on an AVX-512
        # AMD EPYC), far below what a wrong weighting of either term would change
        assert kd.item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-4)


def test_decoupled_kd_is_zero_for_an_identical_student_and_has_no_teacher_gradient():
    tckd, nckd = losses.decoupled_kd_terms(TEACHER, TEACHER, TARGET, 4.0)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-6
    student, teacher = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    losses.decoupled_kd(student, teacher, TARGET, 1.0, 8.0, 4.0).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        losses.decoupled_kd_terms(STUDENT, TEACHER, TARGET, 0.0)


def test_dkd_warms_up_linearly_over_epochs_and_keeps_cross_entropy_at_its_weight():
    cfg = tiny_config(distill={"method": "dkd", "beta": 2.0, "warmup_epochs": 4, "ce_weight": 0.5})
    objective = arms.make("strict", cfg).objective(1)
    assert isinstance(objective.method, DecoupledKD)
    tckd, nckd = losses.decoupled_kd_terms(STUDENT, TEACHER, TARGET, 4.0)
    for epoch, ramp in [(0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)]:
        terms = objective.terms(STUDENT, TARGET, TEACHER, epoch=epoch)
        assert list(terms) == ["ce", "tckd", "nckd"]
        assert terms["ce"].item() == pytest.approx(0.5 * F.cross_entropy(STUDENT, TARGET).item(), rel=1e-6)
        assert terms["tckd"].item() == pytest.approx(ramp * tckd.item(), rel=1e-6)
        assert terms["nckd"].item() == pytest.approx(ramp * 2.0 * nckd.item(), rel=1e-6)
    patriarch = arms.make("strict", cfg).objective(0).terms(STUDENT, TARGET)
    assert list(patriarch) == ["ce"] and patriarch["ce"].item() == pytest.approx(F.cross_entropy(STUDENT, TARGET).item())


def test_distill_method_is_validated_like_every_section():
    assert load_config(None, ["distill.method=dkd"]).distill.beta == 8.0  # the DKD paper's defaults
    assert load_config(None, []).distill.method == "kd"
    with pytest.raises(ConfigError, match=r"unknown key 'distill.bata' \(did you mean 'distill.beta'\?\)"):
        load_config(None, ["distill.method=dkd", "distill.bata=2"])
    with pytest.raises(ConfigError, match=r"'distill.beta' is not a key of distill.method 'kd' \(a key of 'dkd'\)"):
        load_config(None, ["distill.beta=2"])  # a dkd key under kd
    with pytest.raises(ConfigError, match="distill.method: unknown method; choose one of .*kd.*dkd"):
        load_config(None, ["distill.method=fitnet"])
    with pytest.raises(ConfigError, match="distill.warmup_epochs"):
        load_config(None, ["distill.method=dkd", "distill.warmup_epochs=-1"])


def test_a_dkd_warm_up_longer_than_the_training_is_warned_about_once_in_one_line(capsys, monkeypatch):
    """Issue 29: DKD's default warm-up (20 epochs) exceeds the default train.epochs (8): the term reaches 0.4."""
    import kdgen.config

    monkeypatch.setattr(kdgen.config, "_warned", set())
    capsys.readouterr()
    cfg = load_config(None, ["distill.method=dkd"])
    assert (cfg.distill.warmup_epochs, cfg.train.epochs) == (20.0, 8)
    assert cfg.distill.reached(cfg.train.epochs) == pytest.approx(0.4)
    assert DecoupledKD(1, 8, 4, 20, 1).warmup(cfg.train.epochs - 1) == pytest.approx(0.4)  # what the loss uses
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdgen: warning: ")
    assert "distill.warmup_epochs=20" in err and "train.epochs=8" in err and "0.4 of its full value" in err
    load_config(None, ["distill.method=dkd"])
    assert capsys.readouterr().err == ""  # once per process (a sweep validates a config per grid point)
    for quiet in (["distill.method=dkd", "train.epochs=20"], ["distill.method=dkd", "distill.warmup_epochs=2"],
                  ["distill.method=dkd", "generations.count=0"], ["distill.method=dkd", "distill.warmup_epochs=0"],
                  ["train.epochs=2"]):  # reaches 1, or no student, or kd
        monkeypatch.setattr(kdgen.config, "_warned", set())
        load_config(None, quiet)
        assert capsys.readouterr().err == "", quiet
    monkeypatch.setattr(kdgen.config, "_warned", set())
    load_config(None, ["distill.method=dkd", "train.epochs=30", "distill.warmup_epochs=40"])
    assert "only ramps up to 0.75 of its full value" in capsys.readouterr().err


def test_kd_unit_keys_are_those_of_before_the_method_key_and_dkd_keys_differ():
    kd = tiny_config(distill={"weight": 0.7})
    assert unit_settings(kd, "strict", 0, 1)["distill"] == {"weight": 0.7, "temperature": 4.0}
    dkd = unit_settings(tiny_config(distill={"method": "dkd"}), "strict", 0, 1)["distill"]
    assert dkd["method"] == "dkd" and dkd["beta"] == 8.0
    assert "distill" not in unit_settings(tiny_config(distill={"method": "dkd"}), "strict", 0, 0)  # no teacher


class Hint(StudentMethod):
    """A FitNet-style hint: a head of its own maps the student's pooled features onto the teacher's."""

    features = ("features.7",)

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 32)
        self.seen: list[tuple[int, int]] = []

    def forward(self, step: Step) -> dict:
        self.seen.append((step.progress.epoch, step.progress.step))
        student, teacher = step.features["features.7"], step.teacher_features["features.7"]
        assert student.requires_grad and not teacher.requires_grad and step.progress.total_steps > 0
        return {"hint": F.mse_loss(self.head(student.float()), teacher.float())}


def test_a_method_with_parameters_and_features_trains_its_head_and_resumes_it(tiny_cfg, tiny_data):
    torch.manual_seed(0)
    teacher = freeze_teacher(build("cnn-tiny", 4, 1))
    torch.manual_seed(1)
    student = build("cnn-tiny", 4, 1)
    objective = GenerationObjective(method=Hint())
    head_before = objective.method.head.weight.clone()
    states = []
    train_generation(student, tiny_data, tiny_cfg.train, objective, hooks=TrainHooks(on_state=states.append), seed=0,
                     teacher=teacher)
    steps = len(tiny_data.train) // tiny_cfg.train.batch_size
    assert objective.method.seen == [(e, e * steps + s) for e in range(tiny_cfg.train.epochs) for s in range(steps)]
    assert not torch.equal(objective.method.head.weight, head_before)  # the head joined the optimizer
    assert torch.equal(states[-1].loss_module["method.head.weight"], objective.method.head.weight.cpu())
    assert all(not m._forward_hooks for m in student.modules()) and all(not m._forward_hooks for m in teacher.modules())
    fresh = GenerationObjective(method=Hint())
    from kdgen.training.resume import restore
    torch.manual_seed(1)
    again = build("cnn-tiny", 4, 1)
    from kdgen.training.loop import make_optimizer, make_schedule
    optimizer = make_optimizer(again, tiny_cfg.train, fresh)
    restore(states[0], again, optimizer, make_schedule(optimizer, tiny_cfg.train, steps), torch.Generator(), fresh)
    assert torch.equal(fresh.method.head.weight, states[0].loss_module["method.head.weight"])


def test_a_loss_that_fails_mid_epoch_leaves_no_hook_on_the_models(tiny_cfg, tiny_data):
    class FailsAtStep2(Hint):
        def forward(self, step):
            if step.progress.step == 2:
                raise RuntimeError("boom")
            return super().forward(step)

    teacher, student = freeze_teacher(build("cnn-tiny", 4, 1)), build("cnn-tiny", 4, 1)
    with pytest.raises(RuntimeError, match="boom"):
        train_generation(student, tiny_data, tiny_cfg.train, GenerationObjective(method=FailsAtStep2()), seed=0,
                         teacher=teacher)
    assert all(not m._forward_hooks for m in student.modules()) and all(not m._forward_hooks for m in teacher.modules())


def test_a_loss_asking_for_a_module_the_model_lacks_gets_one_line(tiny_cfg, tiny_data):
    class Missing(GenerationLoss):
        features = ("layer9",)

        def forward(self, step):
            return {"ce": losses.cross_entropy(step.logits, step.targets)}

    from kdgen.errors import UserError
    with pytest.raises(UserError, match="module 'layer9'"):
        train_generation(build("cnn-tiny", 4, 1), tiny_data, tiny_cfg.train, Missing(), seed=0)


def test_dkd_runs_from_the_command_line_and_the_api(tmp_path, tiny_data):
    out = tmp_path / "run"
    args = ["data.name=synthetic", "data.num_train=80", "data.num_test=24", "data.image_size=8", "data.channels=1",
            "data.num_classes=4", "model.name=cnn-tiny", "train.epochs=2", "train.batch_size=16", "seeds=[0]",
            "generations.count=1", "generations.arms=[strict]", "tolerance.k=3", "distill.method=dkd",
            "distill.warmup_epochs=1", "--no-progress", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "kdgen", "run", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "method: dkd" in (out / "config.yaml").read_text()
    import kdgen
    cfg = tiny_config(distill={"method": "dkd"}, generations={"count": 1, "arms": ["strict"]})
    rows = kdgen.train_generations(lambda: build("cnn-tiny", 4, 1), tiny_data, cfg)
    assert {(r["arm"], r["generation"]) for r in rows} == {("strict", 0), ("strict", 1)}


def test_an_arm_with_two_teachers_hands_both_to_the_loss(tiny_data, monkeypatch):
    """Arm.teachers may name several earlier generations; the loss gets every teacher's logits, in order."""
    from kdgen.arms import base as arm_registry
    from kdgen.arms.born_again import Strict
    from kdgen.running.generations import GenerationsRunner

    seen = []

    class Both(StudentMethod):
        def forward(self, step):
            seen.append(len(step.teachers_logits))
            assert step.teacher_logits is step.teachers_logits[0]
            mean = torch.stack(step.teachers_logits).mean(dim=0)
            return {"kd": losses.distillation_loss(step.logits, mean, 2.0)}

    class TwoTeachers(Strict):
        name = "test-two-teachers"

        def teachers(self, generation):
            return [g for g in (generation - 1, generation - 2) if g >= 0]

        def objective(self, generation):
            return GenerationObjective(method=Both() if generation > 0 else None)

    monkeypatch.setitem(arm_registry._REGISTRY, TwoTeachers.name, TwoTeachers)  # registered for this test only

    cfg = tiny_config(generations={"count": 2, "arms": ["test-two-teachers"]}, train={"epochs": 1})
    rows = GenerationsRunner(cfg, tiny_data, lambda: build("cnn-tiny", 4, 1)).run()
    steps = len(tiny_data.train) // cfg.train.batch_size
    assert seen == [1] * steps + [2] * steps and len({r["generation"] for r in rows}) == 3


def test_a_loss_reading_features_gets_every_teachers_own(tiny_cfg, tiny_data):
    class TwoTeachers(Hint):
        def forward(self, step):
            assert len(step.teachers_features) == 2 and step.teacher_features is step.teachers_features[0]
            first, second = (f["features.7"] for f in step.teachers_features)
            self.differ = not torch.equal(first, second)  # two models with other weights: other features
            return super().forward(step)

    torch.manual_seed(0)
    teachers = [freeze_teacher(build("cnn-tiny", 4, 1)), freeze_teacher(build("cnn-tiny", 4, 1))]
    method = TwoTeachers()
    train_generation(build("cnn-tiny", 4, 1), tiny_data, tiny_cfg.train, GenerationObjective(method=method), seed=0,
                     teacher=teachers)
    assert method.differ and all(not m._forward_hooks for t in teachers for m in t.modules())
