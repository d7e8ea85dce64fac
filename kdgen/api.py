"""The Python API for your own model and tensors.

Example (see docs/guide/api.md):

    import torch, kdgen
    data = kdgen.bundle_from_tensors(train_images, train_labels, test_images, test_labels)
    cfg = kdgen.Config(seeds=[0, 1], generations={"count": 2})
    rows = kdgen.train_generations(lambda: MyNet(num_classes=10), data, cfg)
    print(kdgen.summary_text(rows))
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from kdgen.config import Config
from kdgen.data.base import AugmentSpec, DataBundle, SourceData, Split, make_bundle
from kdgen.errors import DataError
from kdgen.folders import Row
from kdgen.reporting.results import Results
from kdgen.reporting.tables import console_summary


def bundle_from_tensors(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                        test_labels: torch.Tensor, *, class_names: Sequence[str] | None = None,
                        val_fraction: float = 0.2, split_seed: int = 0,
                        augment: AugmentSpec = AugmentSpec(), train_per_class: int | None = None) -> DataBundle:
    """A :class:`DataBundle` from uint8 image tensors ``(N, C, H, W)`` and integer labels.

    A stratified ``val_fraction`` of the training data is held out for choices; the test tensors
    are only ever evaluated. Normalisation constants are computed from the remaining training data.
    ``train_per_class`` keeps a fixed stratified subset of that many training images per class.
    """
    if train_images.dtype != torch.uint8 or test_images.dtype != torch.uint8:
        raise DataError("images must be uint8 tensors (N, C, H, W) in 0..255; "
                        "convert with (x * 255).round().to(torch.uint8)")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    source = SourceData(train=Split(train_images, train_labels), test=Split(test_images, test_labels),
                        class_names=names, augment=augment)
    source.check_labels("bundle_from_tensors")
    return make_bundle(source, val_fraction, split_seed, train_per_class=train_per_class)


def train_generations(model_factory: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]], data: DataBundle,
                      cfg: Config | None = None, *, out_dir: str | Path | None = None, resume: bool = False,
                      echo: bool = False) -> list[Row]:
    """Train every arm, seed and generation of ``cfg`` with models from ``model_factory``.

    The same pipeline as ``kdgen run`` (same checks, config.yaml, run folder, report), with your
    data and model: ``model_factory`` must return a *new* model each call (it is seeded per
    generation before the call); a list of factories gives each generation its own model, patriarch first, the
    last repeating (a large teacher, compact students); ``cfg.data``, ``cfg.model`` and ``cfg.generations.models``
    are not used. With ``out_dir``,
    config.yaml, checkpoints, results.json and the report are written there, and ``resume=True``
    continues an interrupted call (same data, factory and config). Returns the tidy rows of results.json.
    """
    from kdgen.running.generations import ChainModels
    from kdgen.running.runner import ORIGIN_API, run_pipeline

    out = Path(out_dir) if out_dir is not None else None
    _, rows = run_pipeline(cfg or Config(), data, ChainModels.from_user(model_factory), out, data_name="your data",
                           origin=ORIGIN_API, resume=resume, echo=echo)
    return rows


def summary_text(rows: list[Row]) -> str:
    """The console summary table (test split, mean ± std over seeds, paired differences)."""
    return console_summary(Results(rows))
