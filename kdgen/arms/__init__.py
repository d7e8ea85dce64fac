"""Arms: the ways of training a chain of generations that a run compares, as registered plug-ins.

Every module in this package is imported when the package is, and registers its arms with
:func:`register`; so adding an arm is one file here (plus its tests). The driver
(:mod:`kdgen.running.generations`), the run's checks, the unit cache and the report only ask arms questions:
see :class:`~kdgen.arms.base.Arm`.
"""

from __future__ import annotations

from kdgen.arms.base import Arm, color, get, make, names, register, settings_sections, sort_key
from kdgen.plugins import import_submodules

__all__ = ["Arm", "color", "get", "make", "names", "register", "settings_sections", "sort_key"]

import_submodules(__name__, __path__, skip=("base",))
