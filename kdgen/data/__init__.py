"""Data sources behind one small interface.

A source is a function ``load(cfg: DataConfig) -> SourceData`` registered under a name with
:func:`register`. :func:`load_bundle` loads one and holds out the validation split.
"""

from __future__ import annotations

from typing import Callable

from kdgen import plugins
from kdgen.data.base import AugmentSpec, DataBundle, SourceData, Split, make_bundle, select_classes
from kdgen.data.settings import DataConfig

_SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {}
# Every module of this package registers its sources when imported; they are imported on first use of
# the registry (with plug-ins' sources: kdgen.plugins), so `import kdgen` stays light and `names()` is complete.


def register(name: str) -> Callable[[Callable[[DataConfig], SourceData]], Callable[[DataConfig], SourceData]]:
    """Decorator: register a loader ``cfg -> SourceData`` under ``name``."""

    def wrap(loader: Callable[[DataConfig], SourceData]) -> Callable[[DataConfig], SourceData]:
        if name in _SOURCES and _SOURCES[name] is not loader:
            raise ValueError(f"data source {name!r} is registered twice")
        _SOURCES[name] = loader
        return loader

    return wrap


def _import_sources() -> None:
    plugins.import_submodules(__name__, __path__, skip=("base",))
    plugins.load()


def names() -> list[str]:
    """Names of the registered data sources."""
    _import_sources()
    return sorted(_SOURCES)


def load_source(cfg: DataConfig) -> SourceData:
    """Run the loader registered as ``cfg.name``."""
    _import_sources()
    source = _SOURCES[cfg.name](cfg)
    source.check_labels(cfg.name)
    return source


def load_bundle(cfg: DataConfig) -> DataBundle:
    """Load the source named in ``cfg``, split off validation data, and apply augmentation overrides."""
    source = load_source(cfg)
    if cfg.classes is not None:
        source = select_classes(source, cfg.classes, cfg.name)
    augment = AugmentSpec(
        translate=source.augment.translate if cfg.augment.translate is None else cfg.augment.translate,
        hflip=source.augment.hflip if cfg.augment.hflip is None else cfg.augment.hflip,
    )
    source.augment = augment
    return make_bundle(source, cfg.val_fraction, cfg.split_seed, train_per_class=cfg.train_per_class)


__all__ = ["AugmentSpec", "DataBundle", "SourceData", "Split", "load_bundle", "load_source", "names", "register"]
