"""The learning-rate schedule: a step schedule's milestones are fractions of all the epochs, warm-up included (issue 29)."""

import math

import pytest
import torch
from conftest import tiny_config
from torch import nn

from kdgen.config import TrainConfig
from kdgen.data import load_bundle
from kdgen.models import build
from kdgen.training import loop
from kdgen.training.loop import lr_factor, make_optimizer, make_schedule, train_generation
from kdgen.training.objective import GenerationObjective
from kdgen.training.runtime import Runtime


def lr_at_epoch_starts(recipe: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of the first step of every epoch (0-based), as the loop's schedule gives it."""
    optimizer = make_optimizer(nn.Linear(2, 2), recipe)
    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    rates = []
    for step in range(recipe.epochs * steps_per_epoch):
        if step % steps_per_epoch == 0:
            rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


@pytest.mark.parametrize("warmup", [0.0, 5.0])
def test_step_milestones_are_fractions_of_all_the_epochs_warm_up_included(warmup):
    # The example: 200 epochs, 5 of warm-up, milestones [0.5, 0.75] -> drops at epochs 100 and 150
    # (they were at 102.5 and 151.25: counted from the end of warm-up).
    recipe = TrainConfig(epochs=200, lr=0.1, schedule="step", milestones=[0.5, 0.75], gamma=0.1, warmup_epochs=warmup)
    rates = lr_at_epoch_starts(recipe, steps_per_epoch=4)
    assert rates[99] == pytest.approx(0.1)
    assert rates[100] == pytest.approx(0.01)
    assert rates[149] == pytest.approx(0.01)
    assert rates[150] == pytest.approx(0.001)
    assert rates[199] == pytest.approx(0.001)
    drops = [epoch for epoch in range(1, 200) if rates[epoch] < rates[epoch - 1] * 0.5]
    assert drops == [100, 150]
    if warmup:  # the warm-up itself is unchanged: linear from zero to the peak over 5 epochs (20 steps)
        assert rates[0] == pytest.approx(0.1 / 20)
        assert rates[4] == pytest.approx(0.1 * 17 / 20)
        assert rates[5] == pytest.approx(0.1)


def test_the_loop_logs_the_documented_rate_per_epoch():
    """The rates train_generation logs per epoch: 8 epochs, 2 of warm-up, milestones [0.5, 0.75] -> drops at 4 and 6."""
    cfg = tiny_config(train={"epochs": 8, "schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.1,
                             "warmup_epochs": 2, "lr": 0.05})
    data = load_bundle(cfg.data)
    torch.manual_seed(0)
    result = train_generation(build("cnn-tiny", 4, 1), data, cfg.train, GenerationObjective(), Runtime(precision="fp32"),
                              seed=0)
    rates = [log.lr for log in result.history]  # each epoch's starting rate, epochs numbered from 1
    assert [log.epoch for log in result.history] == list(range(1, 9))
    assert rates[2:] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])


def test_without_warm_up_the_schedules_are_unchanged():
    """Units trained without a warm-up (or with cosine/constant) keep their cache keys: the same rate at every step."""

    def before_the_fix(step, total, warmup, recipe):  # lr_factor as it was (milestones counted from the warm-up's end)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if recipe.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if recipe.schedule == "step":
            return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
        return 1.0

    for epochs in (1, 3, 7, 10, 30, 60, 200):
        for steps in (1, 3, 16, 17):
            total = epochs * steps
            for milestones in ([0.5, 0.75], [0.3, 0.6, 0.9], [0.1], [1 / 3, 2 / 3]):
                recipe = TrainConfig(epochs=epochs, schedule="step", milestones=milestones)
                assert [lr_factor(s, total, 0, recipe) for s in range(total)] == \
                    [before_the_fix(s, total, 0, recipe) for s in range(total)], (epochs, steps, milestones)
            for schedule in ("cosine", "constant"):
                recipe = TrainConfig(epochs=epochs, schedule=schedule, warmup_epochs=2)
                warmup = 2 * steps
                assert [lr_factor(s, total, warmup, recipe) for s in range(total)] == \
                    [before_the_fix(s, total, warmup, recipe) for s in range(total)]


def test_a_milestone_inside_the_warm_up_lowers_the_peak_it_climbs_to():
    recipe = TrainConfig(epochs=10, schedule="step", milestones=[0.1, 0.5], gamma=0.5, warmup_epochs=4)
    factors = [lr_factor(epoch, 10, 4, recipe) for epoch in range(10)]  # one step per epoch
    assert factors == pytest.approx([0.25, 0.5 * 0.5, 0.5 * 0.75, 0.5 * 1.0, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25])


def test_units_trained_before_the_fix_are_not_reused():
    """The fix (with issue 29's shared streams) raised the loop's revision: it enters every unit's key."""
    from kdgen.running.unit_cache import unit_settings

    assert loop.REVISION >= 2
    for train in ({"schedule": "step", "warmup_epochs": 1}, {"schedule": "step"}, {}):
        for arm in ("baseline", "strict", "tolerant"):
            for generation in (0, 1):
                assert unit_settings(tiny_config(train=train), arm, 0, generation)["code"]["train"] == loop.REVISION
