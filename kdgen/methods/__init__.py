"""Student methods (``distill.method``) and the seam every generation's loss goes through.

See :mod:`kdgen.methods.base`. Built-in methods: ``kd`` and ``dkd``; other packages add theirs through
the ``kdgen.methods`` entry-point group (:mod:`kdgen.plugins`).
"""

from __future__ import annotations

from kdgen.methods import kd  # noqa: F401,I001 - registers kd first: the default, listed first
from kdgen.methods import dkd  # noqa: F401
from kdgen.methods.base import (METHODS, GenerationLoss, MethodSettings, Progress, Step, StudentMethod,
                                register)

__all__ = ["METHODS", "GenerationLoss", "MethodSettings", "Progress", "Step", "StudentMethod", "register"]
