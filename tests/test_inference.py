"""kdgen.load and kdgen predict: a run's models on uint8 images, and one-line errors for bad inputs."""

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import kdgen
from kdgen.checkpoint import load_state, save_model
from kdgen.cli import main
from kdgen.config import load_config
from kdgen.data import load_bundle
from kdgen.training.augment import Normalizer
from kdgen.training.metrics import predict_probs

DATA = ["data.name=synthetic", "data.num_train=256", "data.num_test=24", "data.image_size=8", "data.channels=1",
        "data.num_classes=4"]
RUN = [*DATA, "model.name=cnn-tiny", "train.epochs=2", "train.batch_size=16", "seeds=[0]", "generations.count=2",
       "tolerance.k=3", "--no-progress"]  # precision auto: bf16 where native, as a user's run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run, and its test images written as PNG files."""
    root = tmp_path_factory.mktemp("inference")
    assert main(["run", "--out", str(root / "run"), *RUN]) == 0
    data = load_bundle(load_config(None, DATA).data)
    (root / "png").mkdir()
    for i, image in enumerate(data.test.images):
        Image.fromarray(image[0].numpy(), mode="L").save(root / "png" / f"{i:03d}.png")
    return root, data


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("which", ["best", "strict/0/2", "tolerant/0/0"])
def test_predict_on_png_files_gives_the_runs_own_test_evaluation(run, which, capsys):
    root, data = run
    assert main(["predict", str(root / "run"), str(root / "png"), "--which", which]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [str(root / "png" / f"{i:03d}.png") for i in range(len(data.test))]
    classifier = kdgen.load(root / "run", which)
    # the run's evaluation path (BatchNorm-folded, the run's normalisation and precision) on the same model
    probs = predict_probs(classifier.members[0], data.test, Normalizer(data.mean, data.std, torch.device("cpu")),
                          precision=classifier.precision, channels_last=classifier.channels_last)
    assert [r["class"] for r in rows] == [data.class_names[i] for i in probs.argmax(dim=1).tolist()]
    assert torch.allclose(torch.tensor([float(r["probability"]) for r in rows]), probs.max(dim=1).values, atol=1e-5)
    # and the accuracy in results.json for that unit
    arm, seed, gen = (which if which != "best" else "{arm}/{seed}/{generation}".format(
        **json.loads((root / "run" / "best.json").read_text()))).split("/")
    top1 = next(r["top1"] for r in json.loads((root / "run" / "results.json").read_text())["rows"]
                if (r["arm"], r["seed"], r["generation"], r["kind"], r["split"]) == (arm, int(seed), int(gen), "single", "test"))
    correct = sum(r["class"] == data.class_names[int(y)] for r, y in zip(rows, data.test.labels))
    assert 100.0 * correct / len(rows) == pytest.approx(top1)


def test_load_returns_an_eval_module_on_uint8_and_an_ensemble_averages_softmax(run):
    root, data = run
    ensemble = kdgen.load(root / "run", "ensemble:strict/0")
    assert not ensemble.training and len(ensemble.members) == 2
    assert not any(p.requires_grad for p in ensemble.parameters())
    members = [kdgen.load(root / "run", f"strict/0/{g}") for g in (1, 2)]
    expected = torch.stack([m(data.test.images) for m in members]).mean(dim=0)
    assert torch.allclose(ensemble(data.test.images), expected, atol=1e-6)
    assert ensemble.class_names == data.class_names and ensemble.image_shape == (1, 8, 8)
    with pytest.raises(TypeError, match="uint8"):
        ensemble(data.test.images.float())


def test_checkpoints_without_inference_metadata_fall_back_to_the_data(run, tmp_path):
    root, data = run
    import shutil

    old = tmp_path / "old"
    shutil.copytree(root / "run", old)
    path = old / "checkpoints" / "strict-seed0-gen2.safetensors"
    state, meta = load_state(path)
    for key in ("mean", "std", "class_names", "image_shape"):
        meta.pop(key)
    model = kdgen.models.build("cnn-tiny", 4, 1)
    model.load_state_dict(state)
    save_model(model, path, meta)
    assert torch.equal(kdgen.load(old, "strict/0/2")(data.test.images), kdgen.load(root / "run", "strict/0/2")(data.test.images))


def _bad_inputs(root, tmp_path):
    (tmp_path / "rgb.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    Image.new("L", (9, 8)).save(tmp_path / "big.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "taken.csv").write_text("keep me")
    incomplete = tmp_path / "incomplete"
    import shutil

    shutil.copytree(root / "run", incomplete)
    (incomplete / "checkpoints" / "strict-seed0-gen2.safetensors").unlink()
    png = str(root / "png" / "000.png")
    return {
        "missing run": (["predict", str(tmp_path / "nope"), png], "not a kdgen run folder"),
        "incomplete run": (["predict", str(incomplete), png, "--which", "strict/0/2"], "has not finished"),
        "unreadable image": (["predict", str(root / "run"), str(tmp_path / "broken.png")], "cannot read"),
        "wrong channels": (["predict", str(root / "run"), str(tmp_path / "rgb.png")], "3 channel"),
        "wrong size": (["predict", str(root / "run"), str(tmp_path / "big.png")], "9x8"),
        "missing image": (["predict", str(root / "run"), str(tmp_path / "none.png")], "none.png"),
        "bad which": (["predict", str(root / "run"), png, "--which", "strict/zero"], "ARM/SEED/GEN"),
        "unknown arm": (["predict", str(root / "run"), png, "--which", "snapshot/0/1"], "arms"),
        "out exists": (["predict", str(root / "run"), png, "--out", str(tmp_path / "taken.csv")], "taken.csv"),
    }


def test_bad_inputs_are_one_line_with_exit_2(run, tmp_path, capsys):
    root, _ = run
    for name, (argv, named) in _bad_inputs(root, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], (name, err)
    assert (tmp_path / "taken.csv").read_text() == "keep me"


def test_predict_writes_a_new_csv_file(run, tmp_path):
    root, data = run
    out = tmp_path / "pred.csv"
    assert main(["predict", str(root / "run"), str(root / "png" / "001.png"), str(root / "png" / "002.png"),
                 "--out", str(out)]) == 0
    rows = csv_rows(out.read_text())
    assert [r["file"] for r in rows] == [str(root / "png" / "001.png"), str(root / "png" / "002.png")]
    assert all(r["class"] in data.class_names and 0.0 < float(r["probability"]) <= 1.0 for r in rows)


def test_predict_on_real_fashion_mnist_pngs_gives_the_runs_test_evaluation(tmp_path, capsys):
    """The done-when check of kdgen predict, on real data: every Fashion-MNIST test image written as a PNG file
    gets the class the run's own evaluation gave it, and the accuracy is the run's test top-1."""
    import gzip

    import numpy as np

    from kdgen.data.idx import FASHION_MNIST_ROOT

    root = Path(FASHION_MNIST_ROOT)
    images_file = root / "t10k-images-idx3-ubyte.gz"
    if not images_file.is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {root} (apt-get install dataset-fashion-mnist)")
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), "data.name=fashion-mnist", "data.train_per_class=20", "model.name=cnn-tiny",
                 "train.epochs=1", "generations.count=0", "generations.arms=[strict]", "seeds=[0]",
                 "--no-progress"]) == 0
    capsys.readouterr()
    raw = np.frombuffer(gzip.open(images_file).read(), np.uint8, offset=16).reshape(-1, 28, 28)
    (tmp_path / "png").mkdir()
    for i, image in enumerate(raw):
        Image.fromarray(image, mode="L").save(tmp_path / "png" / f"{i:05d}.png")
    assert main(["predict", str(run), str(tmp_path / "png"), "--out", str(tmp_path / "pred.csv")]) == 0
    predicted = [r["class"] for r in csv_rows((tmp_path / "pred.csv").read_text())]
    classifier = kdgen.load(run)
    data = load_bundle(load_config(None, ["data.name=fashion-mnist", "data.train_per_class=20"]).data)
    probs = predict_probs(classifier.members[0], data.test, Normalizer(data.mean, data.std, torch.device("cpu")),
                          precision=classifier.precision, channels_last=classifier.channels_last)
    assert predicted == [data.class_names[i] for i in probs.argmax(dim=1).tolist()]
    top1 = next(r["top1"] for r in json.loads((run / "results.json").read_text())["rows"]
                if (r["generation"], r["kind"], r["split"]) == (0, "single", "test"))
    correct = sum(p == data.class_names[int(y)] for p, y in zip(predicted, data.test.labels))
    assert 100.0 * correct / len(predicted) == pytest.approx(top1)
