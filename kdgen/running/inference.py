"""Using what a run trained: :func:`load` a model (or an ensemble of generations) and :func:`predict` images.

The module :func:`load` returns takes what the data sources give, uint8 images ``(N, C, H, W)``,
normalises them as training did and returns class probabilities, so a user needs nothing but the
run folder. The normalisation constants and class names travel in every checkpoint's metadata;
for checkpoints written before they did, they are recomputed from the run's data source.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from kdgen.checkpoint import load_state, read_json
from kdgen.errors import UserError
from kdgen.folders import CONFIG_FILE, RESULTS_FILE, checkpoint_relpath, saved_config

if TYPE_CHECKING:
    from kdgen.config import Config

INFERENCE_META = ("mean", "std", "class_names", "image_shape")


class Classifier(nn.Module):
    """uint8 images ``(N, C, H, W)`` -> class probabilities ``(N, classes)``, in eval mode.

    ``members`` are one model, or the generations of an ensemble whose softmax outputs are averaged.
    ``class_names[i]`` names output ``i``; ``image_shape`` is the ``(C, H, W)`` the models were trained on.
    The forward pass is the run's own evaluation: BatchNorm folded into the convolutions, in
    ``precision`` (``bf16`` or ``fp16`` autocast, or ``fp32``) and ``channels_last`` as recorded, so a model gives
    the classes its run reported (bf16 rounding depends on the folding).
    """

    def __init__(self, members: Sequence[nn.Module], mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str], image_shape: Sequence[int], *, precision: str = "fp32",
                 channels_last: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1))
        self.mean, self.std = [float(m) for m in mean], [float(v) for v in std]  # per channel, [0, 1] units
        self.class_names = list(class_names)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.precision = precision
        self.channels_last = channels_last
        self._folded: list[nn.Module] | None = None  # BatchNorm-folded copies, made on first use
        self.eval()

    def _apply(self, fn: Any, recurse: bool = True) -> "Classifier":
        self._folded = None  # moved or cast: fold again from the members
        return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from kdgen.training.fast import fold_batchnorm
        from kdgen.training.runtime import autocast, memory_format

        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images (N, C, H, W), got {images.dtype}")
        if self._folded is None:
            self._folded = [fold_batchnorm(member) for member in self.members]
        x = (images.float() * self.scale - self.shift).contiguous(memory_format=memory_format(self.channels_last))
        with autocast(x.device.type, self.precision):
            return torch.stack([model(x).float().softmax(dim=-1) for model in self._folded]).mean(dim=0)


def _units(run_dir: Path, cfg: "Config", which: str) -> list[tuple[str, int, int]]:
    """The (arm, seed, generation) units ``which`` names in ``run_dir``."""
    if which == "best":
        best_path = run_dir / "best.json"
        if best_path.is_file():
            best = read_json(best_path)
        else:
            from kdgen.reporting.results import Results

            best = Results.load(run_dir).best_unit()
        if not best:
            raise UserError(f"{run_dir}: no model has val results yet, so there is no best one (incomplete run?)")
        return [(str(best["arm"]), int(best["seed"]), int(best["generation"]))]
    ensemble = which.startswith("ensemble:")
    parts = which.removeprefix("ensemble:").split("/")
    try:
        if ensemble and len(parts) == 2:
            arm_name, seed = parts[0], int(parts[1])
        elif not ensemble and len(parts) == 3:
            arm_name, seed, generation = parts[0], int(parts[1]), int(parts[2])
        else:
            raise ValueError
    except ValueError:
        raise UserError(f"--which {which!r}: expected best, ARM/SEED/GEN (e.g. tolerant/0/2) or ensemble:ARM/SEED") from None
    if arm_name not in cfg.generations.arms or seed not in cfg.seeds:
        raise UserError(f"--which {which!r}: the run has arms {cfg.generations.arms} and seeds {cfg.seeds}")
    if not ensemble:
        if not 0 <= generation <= cfg.generations.count:
            raise UserError(f"--which {which!r}: generations run from 0 to {cfg.generations.count}")
        return [(arm_name, seed, generation)]
    from kdgen import arms

    members = arms.make(arm_name, cfg).ensemble(cfg.generations.count)
    if len(members) < 2:
        raise UserError(f"--which {which!r}: arm {arm_name} has no ensemble of generations in this run")
    return [(arm_name, seed, g) for g in members]


def _data_meta(cfg: "Config") -> dict[str, Any]:
    """Normalisation, class names and image shape from the run's data source (checkpoints of older runs)."""
    from kdgen.data import load_bundle

    data = load_bundle(cfg.data)
    return {"mean": list(data.mean), "std": list(data.std), "class_names": list(data.class_names),
            "image_shape": list(example_shape(data.test))}


def example_shape(split: Any) -> tuple[int, ...]:
    """``(C, H, W)`` of a split's evaluation images."""
    images = getattr(split, "images", None)
    if images is not None:
        return tuple(images.shape[1:])
    return tuple(split.for_eval().dataset()[0][0].shape)


def load(run_dir: str | Path, which: str = "best",
         model_factory: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]] | None = None, *,
         precision: str = "run") -> Classifier:
    """A trained model of ``run_dir`` that takes uint8 images and returns class probabilities.

    ``which``: ``"best"`` (the model chosen on val, as in the report), ``"ARM/SEED/GEN"`` (e.g.
    ``"tolerant/0/2"``), or ``"ensemble:ARM/SEED"`` (the arm's ensemble of generations at the last
    generation, one module averaging their softmax). A run of :func:`kdgen.train_generations` (your
    own model) needs ``model_factory``, the function (or per-generation list) that made its models; a run of
    ``kdgen run`` rebuilds each unit's own architecture from its checkpoint. ``precision="run"`` computes
    as the run did (its recorded precision where this CPU runs bf16 natively, else fp32); ``"fp32"`` or
    ``"bf16"`` choose. Mistakes are :class:`~kdgen.errors.UserError`.
    """
    from kdgen.models import build, check_name, names, namespaced
    from kdgen.training.loop import freeze_teacher

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / RESULTS_FILE).is_file():
        raise UserError(f"{run_dir}: not a kdgen run folder (no {CONFIG_FILE} and {RESULTS_FILE})")
    cfg = saved_config(run_dir)
    members, meta = [], None
    for arm_name, seed, generation in _units(run_dir, cfg, which):
        path = run_dir / checkpoint_relpath(arm_name, seed, generation)
        if not path.is_file():
            raise UserError(f"{run_dir}: {arm_name}/{seed}/{generation} has not finished training (no {path.name}); "
                            "finish the run with --resume")
        state, metadata = load_state(path)
        model_name = metadata.get("model")
        if model_factory is not None:
            factories = list(model_factory) if isinstance(model_factory, Sequence) else [model_factory]
            model = factories[min(generation, len(factories) - 1)]()
        elif model_name in names() or (isinstance(model_name, str) and namespaced(model_name)):
            # The run's own options (timm's kwargs); never the pretrained weights: the checkpoint has the weights.
            try:
                check_name(model_name)  # e.g. a timm/ model where timm cannot be imported
            except ValueError as exc:
                raise UserError(f"{path}: {exc}") from None
            options = cfg.model.kwargs if namespaced(model_name) else None
            model = build(model_name, int(metadata["num_classes"]), int(metadata["in_channels"]), options=options)
        else:
            raise UserError(f"{path}: model {model_name!r} is not a registered model (a run of the Python API with "
                            "your own model: pass model_factory=)")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{path}: the weights do not fit the model ({str(exc).splitlines()[0][:120]})") from None
        members.append(freeze_teacher(model))  # eval mode, no gradients
        if meta is None:
            meta = metadata if all(key in metadata for key in INFERENCE_META) else _data_meta(cfg)
    assert meta is not None
    runtime = cfg.runtime
    if precision == "run":
        from kdgen.training.runtime import native_bf16

        precision = runtime.precision if runtime.precision != "bf16" or native_bf16(torch.device("cpu")) else "fp32"
    return Classifier(members, meta["mean"], meta["std"], meta["class_names"], meta["image_shape"],
                      precision=precision, channels_last=runtime.channels_last)


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The image files named, or found (recursively, sorted) in the folders named."""
    from kdgen.data.imagefolder import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            if not found:
                raise UserError(f"{item}: no images in this folder")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    return files


def read_image(path: Path, shape: Sequence[int], eval_crop: tuple[int, int] | None = None) -> torch.Tensor:
    """One image as uint8 ``(C, H, W)`` of ``shape``; grey or RGB as the model was trained.

    ``eval_crop`` (resize, crop) applies an image-folder run's evaluation transform; other runs
    need images of the training size exactly.
    """
    import numpy as np
    from PIL import Image

    from kdgen.data.imagefolder import _DECODE_ERRORS, resize_center_crop

    channels, height, width = shape
    try:
        with Image.open(path) as image:
            bands = len(image.getbands()) - ("A" in image.getbands())
            if bands != channels and not (image.mode == "P" and channels == 3):
                raise UserError(f"{path}: the image has {bands} channel(s); the model takes {channels}")
            image = image.convert("L" if channels == 1 else "RGB")
    except _DECODE_ERRORS as exc:
        raise UserError(f"{path}: cannot read the image ({type(exc).__name__})") from None
    if eval_crop is not None:
        image = resize_center_crop(image, *eval_crop)
    if image.size != (width, height):
        raise UserError(f"{path}: the image is {image.size[0]}x{image.size[1]}; the model takes {width}x{height}")
    array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array.reshape(height, width, channels)).permute(2, 0, 1).contiguous()


def predict(run_dir: str | Path, paths: Iterable[str | Path], which: str = "best", out: Path | None = None,
            batch_size: int = 256) -> list[tuple[str, str, float]]:
    """(file, class, probability) of each image, written as CSV to ``out`` (or stdout)."""
    classifier = load(run_dir, which)
    files = image_files(paths)
    data_cfg = saved_config(Path(run_dir)).data
    eval_crop = (data_cfg.eval_resize, data_cfg.eval_crop) if data_cfg.name == "imagefolder" else None
    results: list[tuple[str, str, float]] = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images = torch.stack([read_image(path, classifier.image_shape, eval_crop) for path in chunk])
            confidence, index = classifier(images).max(dim=1)
            results.extend((str(path), classifier.class_names[i], float(p))
                           for path, i, p in zip(chunk, index.tolist(), confidence.tolist()))
    handle = open(out, "w", newline="", encoding="utf-8") if out is not None else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "probability"])
        writer.writerows((f, c, f"{p:.6f}") for f, c, p in results)
    finally:
        if out is not None:
            handle.close()
    return results
