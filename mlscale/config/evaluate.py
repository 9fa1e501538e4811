"""How a trained model is judged beyond its metric: the evaluate section (slices, behaviour)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlscale.config.base import StrictModel


class InvarianceCheck(StrictModel):
    """Changing this field to each of these values moves predictions by at most max_mean_shift on average."""

    column: str
    values: list[Any] = Field(..., min_length=1)
    max_mean_shift: float = Field(0.02, gt=0)


class DirectionalCheck(StrictModel):
    """Adding delta to this numeric field moves the average prediction the expected way (never the other)."""

    column: str
    delta: float
    direction: Literal["up", "down"]


class MinimumCase(StrictModel):
    """A hand-written record and the range its prediction must fall in."""

    name: str
    record: dict[str, Any]
    min: float | None = None
    max: float | None = None


class BehaviourConfig(StrictModel):
    rows: int = Field(500, ge=10, description="Held-out rows the invariance and directional checks perturb.")
    invariance: list[InvarianceCheck] = Field(default_factory=list)
    directional: list[DirectionalCheck] = Field(default_factory=list)
    minimum: list[MinimumCase] = Field(default_factory=list)


class EvaluateConfig(StrictModel):
    slices: list[str] = Field(default_factory=lambda: ["carrier", "origin"], description="Metrics per value.")
    min_slice_rows: int = Field(100, ge=1, description="Smaller slices are reported as too small, not scored.")
    calibration_bins: int = Field(15, ge=2, le=100)
    behaviour: BehaviourConfig = Field(default_factory=BehaviourConfig)
