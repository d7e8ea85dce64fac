"""The generation bookkeeping bugs of public born-again code, each ruled out by a test."""

import torch
from conftest import tiny_config
from torch import nn

import kdgen.training.loop as train_module
from kdgen import arms
from kdgen.losses import top_score_difference
from kdgen.models import build
from kdgen.reporting.results import Results
from kdgen.running.generations import GenerationsRunner, Unit, units
from kdgen.training.loop import freeze_teacher, train_generation


class Recorder(nn.Module):
    """A tiny CNN that records, for every forward, its mode, grad and inference-mode state and input.

    It records from a forward pre-hook, which also keeps the teacher from being BatchNorm-folded
    (a traced copy would not run hooks), so the log shows the teacher object itself.
    """

    created = 0

    def __init__(self, log: list, num_classes: int = 4) -> None:
        super().__init__()
        self.log = log
        # A serial number, not id(): a freed patriarch's address may be reused by a later student.
        Recorder.created += 1
        self.serial = Recorder.created
        self.net = build("cnn-tiny", num_classes, 1)
        self.register_forward_pre_hook(Recorder.record)

    def record(self, args: tuple) -> None:
        self.log.append({"model": self.serial, "training": self.training, "inference": torch.is_inference_mode_enabled(),
                         "requires_grad": any(p.requires_grad for p in self.parameters()),
                         "input": args[0].detach().clone()})

    def forward(self, x):
        return self.net(x)


def test_teacher_is_a_separate_frozen_object_in_inference_mode_on_the_same_batch(tiny_cfg, tiny_data):
    log: list = []
    cfg = tiny_cfg.model_copy(update={"generations": tiny_cfg.generations.model_copy(update={"arms": ["strict"]})})
    GenerationsRunner(cfg, tiny_data, lambda: Recorder(log)).run()
    models = list(dict.fromkeys(entry["model"] for entry in log))
    assert len(models) == 3  # patriarch + 2 students: three distinct objects
    # Every training forward of a student is preceded by its teacher's forward on the same augmented
    # batch: the previous generation's object, in eval mode, with no gradients, under inference mode.
    student_steps = 0
    for i, entry in enumerate(log):
        if entry["training"] and entry["model"] != models[0]:
            teacher_call = log[i - 1]
            assert models.index(teacher_call["model"]) == models.index(entry["model"]) - 1
            assert not teacher_call["training"] and teacher_call["inference"] and not teacher_call["requires_grad"]
            assert torch.equal(teacher_call["input"], entry["input"])
            student_steps += 1
    assert student_steps == 2 * cfg.train.epochs * (len(tiny_data.train) // cfg.train.batch_size)


def test_train_generation_refuses_unfrozen_or_identical_teacher(tiny_cfg, tiny_data):
    import pytest

    from kdgen.training.objective import GenerationObjective

    model = build("cnn-tiny", 4, 1)
    objective = GenerationObjective.kd(0.5, 2.0)
    with pytest.raises(ValueError, match="different objects"):
        train_generation(model, tiny_data, tiny_cfg.train, objective, seed=0, teacher=model)
    other = build("cnn-tiny", 4, 1)
    with pytest.raises(ValueError, match="frozen"):
        train_generation(model, tiny_data, tiny_cfg.train, objective, seed=0, teacher=other)


def test_every_generation_gets_a_fresh_optimizer_and_schedule(tiny_cfg, tiny_data, monkeypatch):
    optimizers, first_lrs = [], []
    real_make_optimizer = train_module.make_optimizer

    def spy(model, recipe, loss=None):
        optimizer = real_make_optimizer(model, recipe, loss)
        assert not optimizer.state  # no momentum buffers carried over
        optimizers.append(optimizer)
        return optimizer

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    real_train = train_module.train_generation

    def record_lr(*args, **kwargs):
        result = real_train(*args, **kwargs)
        first_lrs.append(result.history[0].lr)
        return result

    import kdgen.running.generations as generations_module

    monkeypatch.setattr(generations_module, "train_generation", record_lr)
    cfg = tiny_config(train={"schedule": "cosine"})
    GenerationsRunner(cfg, tiny_data, lambda: build("cnn-tiny", 4, 1)).run()
    assert len(optimizers) == len(units(cfg)) == 9
    assert len({id(o) for o in optimizers}) == len(optimizers)
    # every optimizer holds only its own model's parameters
    param_sets = [{id(p) for g in o.param_groups for p in g["params"]} for o in optimizers]
    assert all(not (a & b) for i, a in enumerate(param_sets) for b in param_sets[i + 1:])
    assert first_lrs == [cfg.train.lr] * 9  # each schedule starts at the base LR, not where the last one ended


def test_unit_streams_are_shared_by_the_arms_and_differ_across_seeds_and_generations():
    """Common random numbers (issue 29): one stream per (seed, generation), whatever the arm."""
    streams = {(seed, g): {Unit(arm, seed, g).stream_seed for arm in ("baseline", "strict", "tolerant", "snapshot")}
               for seed in (0, 1) for g in range(4)}
    assert all(len(arms_streams) == 1 for arms_streams in streams.values())
    assert len(set.union(*streams.values())) == 8
    assert Unit("strict", 0, 1).stream_seed == Unit("strict", 0, 1).stream_seed


def test_the_arms_of_a_seed_start_from_the_same_weights_and_see_the_same_batches(tiny_data, monkeypatch):
    """Strict and tolerant patriarchs of a seed differ only by the TSD term: same initial weights, same batch order."""
    import kdgen.running.generations as generations_module

    seen = {}
    real_train = generations_module.train_generation

    def record(model, data, recipe, objective, runtime, hooks=None, *, seed, **kwargs):
        seen[hooks.where] = (seed, [p.detach().clone() for p in model.parameters()])
        return real_train(model, data, recipe, objective, runtime, hooks, seed=seed, **kwargs)

    monkeypatch.setattr(generations_module, "train_generation", record)
    cfg = tiny_config(generations={"count": 1, "arms": ["strict", "tolerant"]}, seeds=[0, 1])
    GenerationsRunner(cfg, tiny_data, lambda: build("cnn-tiny", 4, 1)).run()
    for seed in (0, 1):
        for g in (0, 1):
            strict = seen[f"arm strict, seed {seed}, generation {g}"]
            tolerant = seen[f"arm tolerant, seed {seed}, generation {g}"]
            assert strict[0] == tolerant[0]  # the batch order and augmentation
            assert all(torch.equal(a, b) for a, b in zip(strict[1], tolerant[1]))  # the initial weights
    assert seen["arm strict, seed 0, generation 0"][0] != seen["arm strict, seed 1, generation 0"][0]
    assert seen["arm strict, seed 0, generation 0"][0] != seen["arm strict, seed 0, generation 1"][0]


def objective_for(cfg, arm, generation):
    return arms.make(arm, cfg).objective(generation)


def test_objectives_per_arm():
    cfg = tiny_config(tolerance={"method": "tsd", "eta": 0.3, "k": 3}, distill={"weight": 0.7, "temperature": 3.0})
    assert objective_for(cfg, "baseline", 2).method is None and objective_for(cfg, "baseline", 2).tolerance is None
    assert objective_for(cfg, "strict", 0).method is None and objective_for(cfg, "strict", 0).tolerance is None
    student = objective_for(cfg, "strict", 1)
    assert (student.method.weight, student.method.temperature, student.tolerance) == (0.7, 3.0, None)
    patriarch = objective_for(cfg, "tolerant", 0)
    assert patriarch.tolerance.name == "tsd" and not patriarch.tolerance.replaces_ce and patriarch.method is None
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = 0.3 * top_score_difference(logits, 3, target=target, primary="target")
    assert torch.equal(patriarch.tolerance.loss(logits, target), expected)
    assert objective_for(cfg, "tolerant", 1).tolerance is None
    all_cfg = tiny_config(tolerance={"apply_to": "all"})
    assert objective_for(all_cfg, "tolerant", 2).tolerance is not None
    terms = objective_for(cfg, "tolerant", 0).terms(torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]))
    assert set(terms) == {"ce", "tsd"}
    student_terms = objective_for(cfg, "strict", 1).terms(torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0]), torch.randn(5, 4))
    assert set(student_terms) == {"ce", "kd"}


def test_results_are_deterministic_and_test_labels_change_nothing_but_test_rows(tiny_data):
    cfg = tiny_config(generations={"count": 1, "arms": ["strict", "tolerant"]})  # a teacher in every chain

    def run(data):
        return GenerationsRunner(cfg, data, lambda: build("cnn-tiny", 4, 1)).run()

    first, second = run(tiny_data), run(tiny_data)
    assert first == second
    shuffled = tiny_data.__class__(**{**tiny_data.__dict__})
    shuffled.test = tiny_data.test.subset(torch.arange(len(tiny_data.test)))
    shuffled.test.labels = tiny_data.test.labels.roll(1)
    third = run(shuffled)
    assert [r for r in first if r["split"] == "val"] == [r for r in third if r["split"] == "val"]
    assert [r for r in first if r["split"] == "test"] != [r for r in third if r["split"] == "test"]


def test_best_checkpoint_is_chosen_on_val_not_test():
    def row(arm, gen, seed, split, top1):
        return {"arm": arm, "generation": gen, "kind": "single", "seed": seed, "split": split, "top1": top1,
                "nll": 0.1, "ece": 0.01}

    rows = [row("strict", 1, 0, "val", 90.0), row("strict", 1, 0, "test", 99.0),
            row("tolerant", 1, 0, "val", 95.0), row("tolerant", 1, 0, "test", 50.0)]
    assert Results(rows).best_unit()["arm"] == "tolerant"


def test_freeze_teacher():
    model = freeze_teacher(build("cnn-tiny", 4, 1).train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_progress_bar_counts_every_optimizer_step(tiny_data, capsys):
    cfg = tiny_config(log={"progress": True}, generations={"count": 1, "arms": ["strict"]})
    GenerationsRunner(cfg, tiny_data, lambda: build("cnn-tiny", 4, 1)).run()
    steps = 2 * cfg.train.epochs * (len(tiny_data.train) // cfg.train.batch_size)  # patriarch + 1 student
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f" {steps}/{steps} " in final and "step" in final
