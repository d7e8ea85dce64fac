"""Speed-ups must not change the maths: the BatchNorm-folded teacher and ``runtime.compile``."""

import pytest
import torch
from conftest import tiny_config
from torch import nn

import kdgen.training.loop as train_module
from kdgen.data import load_bundle
from kdgen.models import build
from kdgen.training.fast import fold_batchnorm
from kdgen.training.loop import freeze_teacher, train_generation
from kdgen.training.objective import GenerationObjective
from kdgen.training.runtime import Runtime


def trained_looking(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, as after training (fresh ones fold to identity)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# Post-activation nets (conv -> BN) fold every BatchNorm; pre-activation WRN keeps those that follow an
# addition; DenseNet's BN follows a concatenation or precedes its conv, so none folds.
@pytest.mark.parametrize("name, size, folds", [("cnn-tiny", 8, "all"), ("resnet20", 16, "all"), ("resnet18", 32, "all"),
                                               ("wrn-16-2", 16, "some"), ("densenet-40", 16, "none")])
def test_folded_teacher_computes_the_same_function_and_leaves_the_teacher_alone(name, size, folds):
    teacher = freeze_teacher(trained_looking(build(name, 10, 3)))
    saved = {key: value.clone() for key, value in teacher.state_dict().items()}
    folded = fold_batchnorm(teacher)
    images = torch.randn(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), teacher(images), rtol=1e-4, atol=1e-4)
    assert folded is not teacher and not folded.training
    assert not any(p.requires_grad for p in folded.parameters())
    assert teacher.state_dict().keys() == saved.keys()
    assert all(torch.equal(teacher.state_dict()[key], value) for key, value in saved.items())
    left, before = count_batchnorms(folded), count_batchnorms(teacher)
    assert {"all": left == 0, "some": 0 < left < before, "none": left == before}[folds]


class DataDependent(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        out = self.bn(self.conv(x))
        return out if out.sum() > 0 else -out


def test_fold_returns_the_teacher_when_it_cannot_or_must_not_fold():
    untraceable = freeze_teacher(DataDependent())
    assert fold_batchnorm(untraceable) is untraceable
    hooked = freeze_teacher(build("cnn-tiny", 4, 1))
    hooked.register_forward_hook(lambda module, args, output: None)
    assert fold_batchnorm(hooked) is hooked  # a traced copy would silently skip the hook
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build("cnn-tiny", 4, 1).train())


class Spy(nn.Module):
    """Wraps whatever train_generation uses as the teacher and records every call."""

    def __init__(self, inner: nn.Module, log: list) -> None:
        super().__init__()
        self.inner, self.log = inner, log

    def forward(self, x):
        self.log.append({"who": "teacher", "training": self.inner.training, "input": x.detach().clone(),
                         "inference": torch.is_inference_mode_enabled(),
                         "requires_grad": any(p.requires_grad for p in self.inner.parameters())})
        return self.inner(x)


def test_the_folded_teacher_is_frozen_under_inference_mode_and_sees_the_student_batch(monkeypatch):
    cfg = tiny_config()
    data = load_bundle(cfg.data)
    log: list = []
    used: list = []

    def spying_fold(teacher):
        folded = fold_batchnorm(teacher)
        used.append(folded)
        return Spy(folded, log)

    monkeypatch.setattr(train_module, "fold_batchnorm", spying_fold)
    teacher = freeze_teacher(build("cnn-tiny", 4, 1))
    student = build("cnn-tiny", 4, 1)
    student.register_forward_pre_hook(lambda module, args: log.append({"who": "student", "input": args[0].clone()}))
    objective = GenerationObjective.kd(0.5, 2.0)
    train_generation(student, data, cfg.train, objective, seed=0, teacher=teacher)
    assert used and used[0] is not teacher and count_batchnorms(used[0]) == 0
    steps = cfg.train.epochs * (len(data.train) // cfg.train.batch_size)
    assert [entry["who"] for entry in log] == ["teacher", "student"] * steps
    for teacher_call, student_call in zip(log[::2], log[1::2]):
        assert not teacher_call["training"] and teacher_call["inference"] and not teacher_call["requires_grad"]
        assert torch.equal(teacher_call["input"], student_call["input"])


@pytest.mark.skipif("ATEN_CPU_CAPABILITY" in __import__("os").environ,
                    reason="inductor's CPU code gives non-finite losses when ATEN_CPU_CAPABILITY caps the CPU below "
                           "its hardware (AVX512 capped to AVX2, torch 2.13; also before issue 11)")
def test_compile_matches_eager_and_reuses_the_student_graph_across_generations():
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    cfg = tiny_config()
    data = load_bundle(cfg.data)
    eager_runtime, compiled_runtime = Runtime(precision="fp32"), Runtime(precision="fp32", compile=True)
    objective = GenerationObjective.kd(0.5, 2.0)

    def fresh(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build("cnn-tiny", 4, 1)

    eager, compiled = fresh(0), fresh(0)
    train_generation(eager, data, cfg.train, GenerationObjective(), eager_runtime, seed=0)
    train_generation(compiled, data, cfg.train, GenerationObjective(), compiled_runtime, seed=0)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-4, msg=name)
    graphs_after_first = counters["stats"]["unique_graphs"]
    assert graphs_after_first > 0  # it really compiled
    # A later generation (new weights, a teacher) reuses the student's graph: only the teacher's is new.
    student = fresh(1)
    teacher = freeze_teacher(compiled)
    train_generation(student, data, cfg.train, objective, compiled_runtime, seed=1, teacher=teacher)
    assert counters["stats"]["unique_graphs"] == graphs_after_first + 1
    reference = fresh(1)
    train_generation(reference, data, cfg.train, objective, eager_runtime, seed=1, teacher=teacher)
    for (name, a), b in zip(reference.state_dict().items(), student.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-4, msg=name)


def test_evaluation_runs_folded_and_matches_the_model():
    from kdgen.training.metrics import predict_probs

    cfg = tiny_config()
    data = load_bundle(cfg.data)
    model = trained_looking(build("cnn-tiny", 4, 1)).train()
    normalize = train_module.Normalizer(data.mean, data.std, torch.device("cpu"))
    probs = predict_probs(model, data.test, normalize, batch_size=7, channels_last=True)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model(normalize(data.test.images)).softmax(dim=-1)
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


def test_compile_without_a_cpp_compiler_is_a_one_line_user_error(monkeypatch):
    import kdgen.training.fast as fast
    from kdgen.errors import UserError

    monkeypatch.setattr(fast.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="runtime.compile=true on the CPU needs a C\\+\\+ compiler"):
        fast.check_compile_supported(torch.device("cpu"))
