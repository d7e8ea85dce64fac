"""Plug-ins from other packages, through Python entry points (as pytest and setuptools take theirs).

A package adds arms, student methods, tolerance methods, data sources or models by declaring a module in
one of the groups below; kdgen imports those modules once, before it builds the config's sections, so
what they register (with the same decorators the built-ins use) is validated like a built-in. In the
plug-in's ``pyproject.toml``::

    [project.entry-points."kdgen.methods"]
    my_method = "my_package.methods"

A plug-in module must not import :mod:`kdgen.config` at import time (the config is being built); the
:class:`~kdgen.arms.Arm` base class gets the config when an arm is made. See ``examples/plugin/``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import warnings
from typing import Iterable

GROUPS = ("kdgen.arms", "kdgen.methods", "kdgen.tolerance", "kdgen.data", "kdgen.models")

_loaded: dict[str, list[str]] = {}
_imported_packages: set[str] = set()


def import_submodules(package: str, path: Iterable[str], skip: tuple[str, ...] = ()) -> None:
    """Import every module of the built-in ``package`` (folder ``path``) once: each registers what it adds."""
    if package in _imported_packages:
        return
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")
    _imported_packages.add(package)


def load() -> dict[str, list[str]]:
    """Import every registered plug-in module once; {group: [entry point names]}.

    A plug-in that fails to import is skipped with a warning naming it and the error: a broken plug-in
    must not stop kdgen (its names are then reported as unknown, with the choices that exist).
    """
    if _loaded:
        return _loaded
    for group in GROUPS:
        _loaded[group] = []
        for entry in importlib.metadata.entry_points(group=group):
            try:
                entry.load()
            except Exception as exc:  # noqa: BLE001 - any failure of someone else's code
                warnings.warn(f"kdgen: plug-in {entry.name!r} ({group}, {entry.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}", stacklevel=2)
                continue
            _loaded[group].append(entry.name)
    return _loaded
