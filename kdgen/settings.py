"""The base of every settings model: kdgen's config sections and the sections plug-in families own.

A family of plug-ins (data sources, arms, tolerance terms, distillation methods) keeps its settings model beside
its code; :mod:`kdgen.config` only composes the sections.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer


class Settings(BaseModel):
    """Strict: a misspelt key is an error; keys added later can stay out of what was recorded before them."""

    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Keys added after runs were recorded: left out while unset, so config.yaml and unit keys read as before they existed.
    omitted_when_unset: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in self.omitted_when_unset:
            if data.get(key) is None:
                data.pop(key, None)
        return data
