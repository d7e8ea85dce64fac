"""Arms: the ways of training a chain of generations that a run compares, as registered plug-ins.

Every module in this package is imported when the package is, and registers its arms with
:func:`register`; so adding an arm is one file here (plus its tests). The driver
(:mod:`kdgen.generations`), the run's checks, the unit cache and the report only ask arms questions:
see :class:`~kdgen.arms.base.Arm`.
"""

from __future__ import annotations

import importlib
import pkgutil

from kdgen.arms.base import Arm, color, get, make, names, register, settings_sections, sort_key

__all__ = ["Arm", "color", "get", "make", "names", "register", "settings_sections", "sort_key"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
