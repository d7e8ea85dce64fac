"""Config loading, dotted overrides, and one-line errors that name the field."""

import pytest

from kdgen.config import Config, apply_overrides, load_config
from kdgen.errors import ConfigError


def test_defaults_are_the_embedded_digits_experiment():
    cfg = load_config()
    assert cfg.data.name == "digits" and cfg.generations.arms == ["baseline", "strict", "tolerant"]
    assert len(cfg.seeds) >= 3 and cfg.generations.count >= 2  # two students: the smallest ensemble


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\ntolerance:\n  eta: 0.1\n")
    cfg = load_config(path, ["train.epochs=2", "tolerance.eta=0.5", "seeds=[0,1]", "generations.arms=[strict]",
                             "data.root=/x y"])
    assert cfg.train.epochs == 2 and cfg.tolerance.eta == 0.5 and cfg.seeds == [0, 1]
    assert cfg.generations.arms == ["strict"] and cfg.data.root == "/x y"


def test_apply_overrides_does_not_mutate_input():
    raw = {"train": {"epochs": 3}}
    apply_overrides(raw, ["train.epochs=4"])
    assert raw == {"train": {"epochs": 3}}


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["unknown key", "train.epoch", "train.epochs"]),
    ("trian.epochs=3", ["unknown key", "trian"]),
    ("train.epochs=two", ["train.epochs"]),
    ("train.epochs=0", ["train.epochs", "greater than or equal to 1"]),
    ("tolerance.k=1", ["tolerance.k"]),
    ("distill.temperature=0", ["distill.temperature"]),
    ("distill.weight=1.5", ["distill.weight"]),
    ("seeds=[]", ["seeds", "at least one seed"]),
    ("seeds=[1,1]", ["seeds", "repeat"]),
    ("generations.arms=[strict,teacher]", ["generations.arms"]),
    ("generations.arms=[]", ["generations.arms"]),
    ("model.name=resnet21", ["model.name", "resnet21"]),
    ("data.name=imagenet22k", ["data.name", "imagenet22k"]),
    ("runtime.precision=fp8", ["runtime.precision"]),
    ("tolerance.method=magic", ["tolerance.method"]),
    ("tolerance.primary=second", ["tolerance.primary"]),
    ("data.val_fraction=1.0", ["data.val_fraction"]),
    ("train.milestones=[0.8,0.2]", ["train.milestones"]),
    ("noequals", ["KEY=VALUE"]),
    ("train.epochs.x=1", ["train.epochs"]),
])
def test_bad_overrides_name_the_field(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("- a\n- b\n", ["mapping"]),
    ("train: [unclosed\n", ["not valid YAML"]),
    ("!!python/object/apply:os.system ['touch pwned']\n", ["not valid YAML"]),
])
def test_bad_files(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    for word in words:
        assert word in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config(None, ["train.epochs=3"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path) == cfg
    assert Config() == load_config()
