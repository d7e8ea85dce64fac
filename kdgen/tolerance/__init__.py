"""Tolerance methods (``tolerance.method``): how a teacher is made *tolerant*, each a registered config class.

A method is a pydantic model with a ``method`` literal (the discriminator of ``tolerance:`` in the
config) and its own strength parameter, plus :meth:`ToleranceMethod.term`, which turns it into the loss
term a generation's objective adds (or, for label smoothing, uses in place of cross-entropy).

Built in: ``none`` (:mod:`~kdgen.tolerance.base`), ``tsd`` (:mod:`~kdgen.tolerance.tsd`),
``label-smoothing`` and ``confidence-penalty`` (:mod:`~kdgen.tolerance.smoothing`). To add a method:
subclass :class:`ToleranceMethod`, decorate it with :func:`register` and give it a golden-value test; in
another package, name its module in the ``kdgen.tolerance`` entry-point group (:mod:`kdgen.plugins`).
``kdgen.config`` builds the ``tolerance`` field's union from :data:`METHODS`, so the method is then
valid in YAML, on the command line and in sweeps.
"""

from __future__ import annotations

from kdgen.tolerance.base import (DEFAULT_TSD_K, METHODS, NoTolerance, ToleranceMethod, ToleranceTerm,  # noqa: I001
                                  register)
from kdgen.tolerance.tsd import TopScoreDifference, binding_eta, eta_for_confidence  # registers tsd second
from kdgen.tolerance.smoothing import ConfidencePenalty, LabelSmoothing

__all__ = ["DEFAULT_TSD_K", "METHODS", "ConfidencePenalty", "LabelSmoothing", "NoTolerance", "ToleranceMethod",
           "ToleranceTerm", "TopScoreDifference", "binding_eta", "eta_for_confidence", "register"]
