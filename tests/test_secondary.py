"""Secondary information (golden values on hand-made probability tables), the training subset and the
train-split rows."""

import math

import pytest
import torch

from kdgen.data.base import SourceData, Split, make_bundle, per_class_subset
from kdgen.errors import DataError
from kdgen.training.metrics import classification_metrics, secondary_information, soft_confusion

# Four images, four classes; groups {0, 1} and {2}, {3} (classes 2 and 3 have no group-mate).
PROBS = torch.tensor([
    [0.6, 0.3, 0.1, 0.0],  # true 0: runner-up (non-target) is 1, a group-mate
    [0.5, 0.1, 0.4, 0.0],  # true 1: the model is wrong (0); the best non-target is 0, a group-mate
    [0.2, 0.1, 0.7, 0.0],  # true 2: no group-mate, not counted by the semantic metrics
    [0.1, 0.1, 0.5, 0.3],  # true 0: runner-up is 2, not a group-mate
])
LABELS = torch.tensor([0, 1, 2, 0])
GROUPS = [[0, 1], [2], [3]]


def entropy(row):
    return -sum(p * math.log(p) for p in row if p > 0)


def test_entropy_and_mass_on_ranks_two_to_k():
    metrics = secondary_information(PROBS, LABELS, k=3)
    assert metrics["entropy"] == pytest.approx(sum(entropy(r) for r in PROBS.tolist()) / 4, abs=1e-6)
    # ranks 2..3 of each row: 0.3+0.1, 0.4+0.1, 0.2+0.1, 0.3+0.1
    assert metrics["secondary_mass"] == pytest.approx((0.4 + 0.5 + 0.3 + 0.4) / 4, abs=1e-6)
    assert secondary_information(PROBS, LABELS, k=2)["secondary_mass"] == pytest.approx((0.3 + 0.4 + 0.2 + 0.3) / 4, abs=1e-6)
    assert "semantic" not in metrics  # no groups, no semantic score


def test_semantic_scores_count_only_images_with_a_group_mate():
    metrics = secondary_information(PROBS, LABELS, k=2, groups=GROUPS)
    assert metrics["semantic"] == pytest.approx(100 * 2 / 3)  # images 0, 1 yes; 3 no; 2 not counted
    # share of the non-target mass on group-mates: 0.3/0.4, 0.5/0.9, 0.1/0.9
    assert metrics["semantic_mass"] == pytest.approx((0.3 / 0.4 + 0.5 / 0.9 + 0.1 / 0.9) / 3, abs=1e-6)


def test_semantic_is_absent_when_no_image_has_a_group_mate():
    assert "semantic" not in secondary_information(PROBS, LABELS, k=2, groups=[[0], [1], [2], [3]])


def test_classification_metrics_carry_the_secondary_fields():
    metrics = classification_metrics(PROBS, LABELS, k=2, groups=GROUPS)
    assert {"top1", "nll", "ece", "conf", "entropy", "secondary_mass", "semantic", "semantic_mass"} <= set(metrics)
    assert metrics["top1"] == 50.0 and metrics["conf"] == pytest.approx((0.6 + 0.5 + 0.7 + 0.5) / 4)


def test_soft_confusion_is_the_mean_probability_per_true_class():
    matrix = soft_confusion(PROBS, LABELS, 4)
    assert matrix[0] == pytest.approx([(0.6 + 0.1) / 2, (0.3 + 0.1) / 2, (0.1 + 0.5) / 2, 0.15])
    assert matrix[1] == pytest.approx([0.5, 0.1, 0.4, 0.0])
    assert matrix[3] == [0.0, 0.0, 0.0, 0.0]  # no image of class 3


def _source(per_class=20, classes=3):
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return SourceData(train=Split(images, labels), test=Split(images[:6], labels[:6]),
                      class_names=[str(c) for c in range(classes)])


def test_train_per_class_is_a_fixed_stratified_subset_after_the_val_split():
    full = make_bundle(_source(), 0.25, split_seed=3)
    subset = make_bundle(_source(), 0.25, split_seed=3, train_per_class=4)
    assert torch.equal(full.val.images, subset.val.images)  # val does not move
    assert torch.bincount(subset.train.labels).tolist() == [4, 4, 4]
    train_ids = set(subset.train.images[:, 0, 0, 0].tolist())
    assert train_ids <= set(full.train.images[:, 0, 0, 0].tolist())
    again = make_bundle(_source(), 0.25, split_seed=3, train_per_class=4)
    assert torch.equal(again.train.images, subset.train.images)  # the same for every run, seed and arm
    other = make_bundle(_source(), 0.25, split_seed=4, train_per_class=4)
    assert not torch.equal(other.train.images, subset.train.images)


def test_train_per_class_above_a_class_size_is_a_data_error():
    with pytest.raises(DataError, match="train_per_class: 16 is more than the 15"):
        make_bundle(_source(), 0.25, train_per_class=16)
    assert len(per_class_subset(torch.tensor([0, 0, 1, 1]), 2, 0)) == 4


def test_train_eval_sample_is_fixed_unaugmented_and_capped():
    bundle = make_bundle(_source(per_class=100), 0.2, train_eval_size=50)
    assert len(bundle.train_eval) == 50
    assert set(bundle.train_eval.images[:, 0, 0, 0].tolist()) <= set(bundle.train.images[:, 0, 0, 0].tolist())
    again = make_bundle(_source(per_class=100), 0.2, train_eval_size=50)
    assert torch.equal(again.train_eval.images, bundle.train_eval.images)
    small = make_bundle(_source(), 0.25, train_per_class=4)
    assert torch.equal(small.train_eval.images, small.train.images)  # all of a small training set


def test_run_rows_include_the_train_split_and_patriarch_heatmaps(tmp_path):
    from kdgen.checkpoint import read_json
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment

    cfg = load_config(None, ["data.name=synthetic", "data.num_train=96", "data.num_test=24", "data.image_size=8",
                             "data.channels=1", "data.num_classes=3", "model.name=cnn-tiny", "train.epochs=1",
                             "train.batch_size=16", "seeds=[0]", "generations.count=1", "log.progress=false",
                             "data.train_per_class=20"])
    out, rows = run_experiment(cfg, tmp_path / "run", echo=False)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all("entropy" in r and "secondary_mass" in r for r in rows)
    saved = read_json(out / "results.json")
    extras = saved["extras"]
    heatmaps = {unit for unit, extra in extras.items() if "soft_confusion" in extra}
    assert heatmaps == {"baseline-seed0-gen0", "strict-seed0-gen0", "tolerant-seed0-gen0"}  # patriarchs only
    matrix = extras["tolerant-seed0-gen0"]["soft_confusion"]["test"]
    # every model's calibration bins, on val and test: counts of all images, confidences in their bins
    assert len(extras) == 6 and all(set(extra["calibration"]) == {"val", "test"} for extra in extras.values())
    bins = extras["strict-seed0-gen1"]["calibration"]["test"]
    assert sum(bins["count"]) == 24 and len(bins["count"]) == 15
    assert all(i / 15 <= c <= (i + 1) / 15 for i, (n, c) in enumerate(zip(bins["count"], bins["confidence"])) if n)
    assert len(matrix) == 3 and all(abs(sum(row) - 1) < 1e-4 for row in matrix)
    # tolerance.k: auto resolves against the 3 classes and config.yaml records the number
    assert "k: 3" in (out / "config.yaml").read_text()
