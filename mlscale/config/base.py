"""The base of every config section: unknown keys are refused (a typo is an error, not a default)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
