"""``kdgen transfer``: how well do a run's penultimate features serve another data set?

Every model of a finished run (each arm, seed and generation) is frozen. Its *features* are the input
of its final linear layer (the last ``nn.Linear`` of the model, or the module a model names in a
``feature_layer`` attribute, or ``probe.layer``). A linear probe, scikit-learn's multinomial logistic
regression on standardised features, is trained on the probe data's training split; its
regularisation ``C`` is chosen on the probe data's val split (held out of its training split, as in
a run); the chosen probe is scored once on the probe data's test split. This is the protocol of
Kornblith et al. (NeurIPS 2021), who found that label smoothing and similar losses make penultimate
features *less* transferable, against the claim of Yang et al. (AAAI 2019) that tolerant teachers'
generations transfer better.

Images of the probe data are adapted to what the models were trained on where that is unambiguous:
grey to RGB by repeating the channel, RGB to grey by luma (ITU-R 601), and a different size by
bilinear resizing (antialiased). Anything else is a one-line error.

Held-out classes: train a run on some classes (``data.classes=[0,1,2,3,4]``) and probe the same source on
the others (``kdgen transfer RUN --data fashion-mnist data.classes=[5,6,7,8,9]``).

Rows go to ``RUN/transfer/<probe>.json`` as ``{"rows": [...], ...}``: one row per (arm, seed,
generation, split) with ``arm``, ``seed``, ``generation``, ``kind`` (``single``), ``probe`` (the probe
data's name), ``split`` (``val`` or ``test``), ``top1``, ``nll``, ``C`` and ``feature_dim``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator
from torch import nn

from kdgen.checkpoint import read_json, write_json
from kdgen.config import apply_overrides, format_validation_error
from kdgen.data.settings import DataConfig
from kdgen.errors import ConfigError, UserError
from kdgen.folders import CONFIG_FILE, RESULTS_FILE, TRANSFER_DIR, Row
from kdgen.settings import Settings

# ITU-R BT.601 luma: what a grey version of an RGB image means in MNIST-like data.
LUMA = (0.299, 0.587, 0.114)


class ProbeData(DataConfig):
    """The probe's data: any registered source (``kdgen sources``) with every ``data.*`` key of a run;
    only the defaults differ."""

    name: str = "mnist"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # A fixed stratified subset of the probe's training split, N images per class (None: all of it).
    # 500 per class keeps a probe fit at about a second for 64-d features on a 2-core CPU.
    train_per_class: int | None = Field(500, ge=1)


class ProbeSettings(Settings):
    # Inverse L2 strength of the logistic regression, chosen on the probe's val split.
    c_values: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    max_iter: int = Field(1000, ge=10)
    # The module whose *input* is the feature vector; None: the model's ``feature_layer`` attribute,
    # else its last nn.Linear.
    layer: str | None = None
    batch_size: int = Field(1024, ge=1)
    # Probe only these generations / arms of the run (None: every model), e.g. a compact chain's students: [1, 2].
    generations: list[int] | None = None
    arms: list[str] | None = None

    @field_validator("c_values")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(c <= 0 for c in value):
            raise ValueError("give at least one C, every one > 0")
        return value


class TransferConfig(Settings):
    """What ``kdgen transfer`` does; KEY=VALUE overrides set ``data.*`` and ``probe.*``."""

    data: ProbeData = ProbeData()
    probe: ProbeSettings = ProbeSettings()


def transfer_config(data: str, root: str | None = None, overrides: Iterable[str] = ()) -> TransferConfig:
    """The validated config of one transfer; mistakes are one-line :class:`ConfigError`."""
    raw = apply_overrides({"data": {"name": data, "root": root}}, list(overrides))
    try:
        return TransferConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "transfer", TransferConfig)) from None


# --- features -----------------------------------------------------------------------------------
def feature_module(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """(name, module) whose input is the model's feature vector.

    ``layer`` names a module (as in ``model.named_modules()``); without it a model's own
    ``feature_layer`` attribute (a module name) decides, else its last ``nn.Linear``: the classifier
    of every model in kdgen's zoo.
    """
    modules = dict(model.named_modules())
    name = layer if layer is not None else getattr(model, "feature_layer", None)
    if name is not None:
        if name not in modules:
            raise UserError(f"feature layer {name!r} is not a module of {type(model).__name__} "
                            f"(some of its modules: {', '.join(n for n in list(modules)[1:6])})")
        return name, modules[name]
    linear = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linear:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer; name the feature layer with probe.layer=NAME "
                        "or a feature_layer attribute on the model")
    return linear[-1]


def adapt_images(images: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """uint8 ``(N, C, H, W)`` made to the model's ``(C, H, W)``, and a note of what changed ("" if nothing)."""
    channels, height, width = shape
    notes = []
    have = images.shape[1]
    if have != channels:
        if have == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
            notes.append("grey to RGB")
        elif have == 3 and channels == 1:
            weights = torch.tensor(LUMA).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
            notes.append("RGB to grey")
        else:
            raise UserError(f"the probe images have {have} channel(s) and the models take {channels}; "
                            "only grey <-> RGB can be converted")
    if tuple(images.shape[2:]) != (height, width):
        notes.append(f"{images.shape[2]}x{images.shape[3]} resized to {height}x{width}")
        images = F.interpolate(images.float(), size=(height, width), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return images, ", ".join(notes)


@torch.inference_mode()
def extract_features(model: nn.Module, images: torch.Tensor, mean: Iterable[float], std: Iterable[float],
                     layer: str | None = None, batch_size: int = 1024, *, precision: str = "fp32",
                     channels_last: bool = False) -> np.ndarray:
    """Penultimate features (the input of :func:`feature_module`) of uint8 ``images``, normalised as in
    training, the model frozen in eval mode: ``(N, D)`` float32.

    Computed as the run evaluated (BatchNorm folded into the convolutions; ``precision`` "bf16" autocast
    and ``channels_last`` where the run used them): 10x faster on a CPU than plain fp32 NCHW.
    """
    from kdgen.training.fast import fold_batchnorm
    from kdgen.training.runtime import autocast, memory_format

    name, module = feature_module(model, layer)
    was_training = model.training
    model.eval()
    folded = fold_batchnorm(model)
    module = dict(folded.named_modules()).get(name, None) if folded is not model else module
    if module is None:  # folding renamed it: compute on the model as it is
        folded, module = model, feature_module(model, name)[1]
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: captured.append(torch.flatten(inputs[0], 1).float()))
    try:
        for start in range(0, len(images), batch_size):
            x = ((images[start:start + batch_size].float() / 255.0 - mean_t) / std_t)
            x = x.contiguous(memory_format=memory_format(channels_last))
            with autocast("cpu", precision):
                folded(x)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), dtype=np.float32)


# --- the probe ----------------------------------------------------------------------------------
def fit_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              c_values: Iterable[float], max_iter: int = 1000, seed: int = 0) -> tuple[Any, float]:
    """The logistic-regression probe (standardised features) with the C of best val top-1 (ties: lower
    val NLL), fitted on ``train``; returns (fitted pipeline, chosen C)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    best: tuple[tuple[float, float], Any, float] | None = None
    for c in c_values:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        # BLAS threads as many as torch's: more oversubscribe a shared CPU (measured: half the time in the kernel)
        with warnings.catch_warnings(), threadpool_limits(torch.get_num_threads()):
            # A strongly regularised probe can stop at max_iter a hair from the optimum; its val score decides.
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(*train)
        top1, nll = score_probe(probe, *val)
        if best is None or (top1, -nll) > best[0]:
            best = ((top1, -nll), probe, float(c))
    assert best is not None
    return best[1], best[2]


def score_probe(probe: Any, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(top-1 in %, NLL in nats) of a fitted probe; classes the probe never saw get probability 0."""
    probs = np.zeros((len(labels), int(max(labels.max(), probe.classes_.max())) + 1))
    probs[:, probe.classes_] = probe.predict_proba(features)
    top1 = 100.0 * float((probs.argmax(axis=1) == labels).mean())
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return top1, nll


# --- a run ----------------------------------------------------------------------------------------
def _finished_units(run_dir: Path) -> list[tuple[str, int, int]]:
    """(arm, seed, generation) of every single model of a finished run, in the run's order."""
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / RESULTS_FILE).is_file():
        raise UserError(f"{run_dir}: not a kdgen run folder (no {CONFIG_FILE} and {RESULTS_FILE})")
    results = read_json(run_dir / RESULTS_FILE)
    if not isinstance(results, dict) or not results.get("complete"):
        raise UserError(f"{run_dir}: the run has not finished (results.json says complete: false); "
                        "finish it with kdgen run --resume first")
    seen: dict[tuple[str, int, int], None] = {}
    for row in results.get("rows", []):
        if row.get("kind") == "single":
            seen[(str(row["arm"]), int(row["seed"]), int(row["generation"]))] = None
    return list(seen)


def _probe_splits(cfg: TransferConfig) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """uint8 images and labels of the probe data's train (subset), val and test splits."""
    from kdgen.data import load_bundle

    data = load_bundle(cfg.data)
    splits = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        images = getattr(split, "images", None)
        if images is None:  # a streamed image folder: decode it once, for every model
            dataset = split.for_eval().dataset()
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        splits[name] = (images, split.labels.numpy())
    return splits


def run_transfer(run_dir: str | Path, cfg: TransferConfig, *, out: str | Path | None = None,
                 model_factory: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]] | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Probe every model of ``run_dir`` on ``cfg.data``; write and return ``<out or RUN/transfer>/<probe>.json``.

    ``model_factory`` rebuilds the models of a run of the Python API (your own model), as for
    :func:`kdgen.load`. Refuses to overwrite an existing file.
    """
    from kdgen.running.inference import load

    run_dir = Path(run_dir)
    every = _finished_units(run_dir)
    gens, arms = cfg.probe.generations, cfg.probe.arms
    units = [u for u in every if (gens is None or u[2] in gens) and (arms is None or u[0] in arms)]
    if not units and (gens is not None or arms is not None):
        raise UserError(f"{run_dir}: probe.generations {gens} and probe.arms {arms} leave no model to probe (the run "
                        f"has arms {sorted({u[0] for u in every})}, generations {sorted({u[2] for u in every})})")
    folder = Path(out) if out is not None else run_dir / TRANSFER_DIR
    path = folder / f"{probe_label(cfg).replace(' ', '-').replace(',', '-')}.json"
    if path.exists():
        raise UserError(f"{path} exists; kdgen does not overwrite it (remove it, or write elsewhere with --out DIR)")
    splits = _probe_splits(cfg)
    # The probe images made to each image shape the run's models take (one shape in a run of one data source).
    adapted: dict[tuple[int, ...], tuple[dict[str, tuple[torch.Tensor, np.ndarray]], str]] = {}
    rows: list[Row] = []
    for index, (arm, seed, generation) in enumerate(units):
        classifier = load(run_dir, f"{arm}/{seed}/{generation}", model_factory)  # the run's precision where native
        shape = tuple(classifier.image_shape)
        if shape not in adapted:
            made = {name: adapt_images(images, shape) for name, (images, _) in splits.items()}  # type: ignore[arg-type]
            adapted[shape] = ({name: (made[name][0], labels) for name, (_, labels) in splits.items()},
                              made["train"][1])
        features = {name: (extract_features(classifier.members[0], images, classifier.mean, classifier.std,
                                            cfg.probe.layer, cfg.probe.batch_size, precision=classifier.precision,
                                            channels_last=classifier.channels_last), labels)
                    for name, (images, labels) in adapted[shape][0].items()}
        probe, c = fit_probe(features["train"], features["val"], cfg.probe.c_values, cfg.probe.max_iter, seed)
        for split in ("val", "test"):
            top1, nll = score_probe(probe, *features[split])
            rows.append({"arm": arm, "seed": seed, "generation": generation, "kind": "single",
                         "probe": probe_label(cfg), "split": split, "top1": top1, "nll": nll, "C": c,
                         "feature_dim": int(features["train"][0].shape[1])})
        if progress is not None:
            progress(f"{index + 1}/{len(units)} {arm}/{seed}/{generation}: probe test top-1 {rows[-1]['top1']:.2f} (C {c:g})")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"rows": rows, "run": str(run_dir), "config": cfg.model_dump(mode="json"),
                      "adapted": "; ".join(note for _, note in adapted.values() if note) or "nothing", "probe_sizes": {k: int(len(v[1])) for k, v in splits.items()}})
    return path


def probe_label(cfg: TransferConfig) -> str:
    """The probe data's name in rows and file names: the source, and its classes where ``data.classes`` picks some."""
    classes = cfg.data.classes
    return cfg.data.name if classes is None else f"{cfg.data.name} classes {','.join(map(str, classes))}"
