"""The base of every config section and of every other declaration read from a file or a request body
(the cluster definition, a deployment's user_config): unknown keys are refused (a typo is an error, not a
default)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
