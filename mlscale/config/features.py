"""How columns become model inputs: the features section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlscale.config.base import StrictModel


class NumericFeature(StrictModel):
    """A numeric column: clip -> signed log1p -> scale; missing values get the mean and an indicator column."""

    column: str
    clip: tuple[float, float] | None = Field(None, description="[low, high] applied before everything else.")
    log1p: bool = Field(False, description="sign(x) * log(1 + |x|), for heavy tails (delays, distances).")
    scale: Literal["standard", "minmax", "none"] = "standard"
    buckets: int | None = Field(None, ge=2, le=1024, description="Also a quantile bucket id, embedded.")

    @model_validator(mode="after")
    def _ordered_clip(self) -> NumericFeature:
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"clip low {self.clip[0]} is above clip high {self.clip[1]} for {self.column!r}")
        return self


class CategoricalFeature(StrictModel):
    """A string column: a top-k vocabulary with an out-of-vocabulary bucket, or hashing for high cardinality."""

    column: str
    hash_buckets: int | None = Field(None, ge=2, description="Hash into this many buckets instead of a vocabulary.")
    min_count: int | None = Field(None, ge=1, description="None: features.min_category_count.")
    max_categories: int | None = Field(None, ge=1, description="None: features.max_categories.")


class CrossFeature(StrictModel):
    """Values of several columns combined, hashed into buckets (e.g. origin x dest = the route)."""

    columns: list[str] = Field(..., min_length=2)
    hash_buckets: int = Field(1024, ge=2)

    @property
    def name(self) -> str:
        return "_x_".join(self.columns)


def _shorthand(value: Any) -> Any:
    """`numeric: [distance]` means `numeric: [{column: distance}]`."""
    if isinstance(value, list):
        return [{"column": item} if isinstance(item, str) else item for item in value]
    return value


class FeaturesConfig(StrictModel):
    numeric: list[NumericFeature] = Field(
        default_factory=lambda: [
            NumericFeature(column=name) for name in
            ("dep_delay", "distance", "temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib")
        ]
    )
    categorical: list[CategoricalFeature] = Field(
        default_factory=lambda: [CategoricalFeature(column=name) for name in ("carrier", "origin", "dest")]
    )
    crosses: list[CrossFeature] = Field(default_factory=list)
    min_category_count: int = Field(20, ge=1, description="Rarer categories share the out-of-vocabulary bucket.")
    max_categories: int = Field(200, ge=1)
    sketch_size: int = Field(512, ge=16, le=65_536, description="Quantile sketch capacity per level (accuracy).")
    hhmm_columns: list[str] = Field(
        default_factory=lambda: ["sched_dep_time", "sched_arr_time"],
        description="HHMM clock times, encoded as cyclical time of day.",
    )
    date_columns: tuple[str, str, str] | None = Field(
        ("year", "month", "day"), description="Columns giving a calendar date: day of week and season features."
    )

    _expand_numeric = field_validator("numeric", mode="before")(classmethod(lambda cls, v: _shorthand(v)))
    _expand_categorical = field_validator("categorical", mode="before")(classmethod(lambda cls, v: _shorthand(v)))

    @property
    def raw_columns(self) -> list[str]:
        """Every input column the features read, in a stable order without repeats."""
        names = [f.column for f in self.numeric] + [f.column for f in self.categorical]
        names += [c for cross in self.crosses for c in cross.columns] + list(self.hhmm_columns)
        names += list(self.date_columns or [])
        return list(dict.fromkeys(names))
