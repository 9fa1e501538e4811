"""What is read and how it is checked and split: the data, validation and split sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from mlscale.config.base import StrictModel
from mlscale.schema import ColumnSpec


class ObjectStoreConfig(StrictModel):
    """S3-compatible object storage. Credentials are read from environment variables, never from the config
    (configs are logged to MLflow as run parameters)."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None: AWS (or AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.")
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    anonymous: bool = False


class SyntheticConfig(StrictModel):
    """The deterministic synthetic flights source: any number of rows, generated lazily in parallel."""

    rows: int = Field(1_000_000, ge=1)
    seed: int = 0
    blocks: int | None = Field(None, ge=1, description="Read tasks; None: one per ~256k rows.")
    bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="Rows given one injected defect each.")


class DataConfig(StrictModel):
    source: Literal["flights", "parquet", "csv", "synthetic"] = "flights"
    path: str | None = Field(None, description="Folder or file for parquet/csv: a local path or s3://bucket/prefix.")
    object_store: ObjectStoreConfig = Field(default_factory=ObjectStoreConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Deterministic hash sample of the source.")
    label: str = "arr_delay"
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification: label >= label_threshold; regression: the label's value."
    )
    label_threshold: float = Field(15.0, description="Label is 1 when the label column is >= this value.")
    time_column: str = "month"
    schema_: list[ColumnSpec] | None = Field(None, alias="schema", description="None: the source's own schema.")
    read_blocks: int = Field(8, ge=1, description="How many files the flights source is cut into for parallel reads.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source in ("parquet", "csv") and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class CheckRule(StrictModel):
    """A cross-column rule: a boolean expression over columns, e.g. `distance / air_time * 60 <= 700`."""

    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str


class ValidationConfig(StrictModel):
    """Expectations on the whole dataset, on top of the per-column rules in the schema."""

    unique: list[str] | None = Field(None, description="Columns forming a key no two rows may share.")
    max_duplicate_keys: int = Field(100_000, ge=0, description="More duplicate keys than this fails the job.")
    checks: list[CheckRule] = Field(default_factory=list)
    min_rows: int = Field(1, ge=0)
    max_rows: int | None = Field(None, ge=1)
    max_quarantine_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Fail the job when a larger fraction of the rows is quarantined."
    )
    examples_per_rule: int = Field(3, ge=0, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> ValidationConfig:
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"validation.max_rows ({self.max_rows}) is below validation.min_rows ({self.min_rows})")
        return self


class TimeRange(StrictModel):
    """Rows whose time value is in [start, end): numbers, or ISO dates/timestamps ("2013-10-01") for a string or
    temporal column (ISO strings sort in time order)."""

    start: int | float | str | None = Field(None, description="Inclusive lower bound; None: unbounded.")
    end: int | float | str | None = Field(None, description="Exclusive upper bound; None: unbounded.")

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.start is None and self.end is None:
            raise ValueError("a time range needs start, end or both")
        if self.start is not None and self.end is not None:
            if isinstance(self.start, str) != isinstance(self.end, str):
                raise ValueError(f"start {self.start!r} and end {self.end!r} must both be numbers or both be dates")
            if not _at_most(self.start, self.end) or self.start == self.end:
                raise ValueError(f"start {self.start!r} is not before end {self.end!r}")
        return self


SplitValues = list[int | float | str] | TimeRange
SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")
_DEFAULT_TIME_SPLIT: dict[str, list[int | float | str]] = {
    "train": list(range(1, 10)), "val": [10, 11], "test": [12]}  # the flights example's months


class SplitConfig(StrictModel):
    """How each valid row is assigned to train, val or test; reproducible on every rerun.

    - `time`: by the value of a time column (`column`, default `data.time_column`): each split is a list of values
      (e.g. months) or a range {start, end} of numbers or ISO dates. Rows in no split are kept as `unused`.
    - `hash`: by a deterministic hash of the `keys` columns (and `seed`), in `fractions`: the same key always lands
      in the same split, so rows of one entity never leak across splits.
    - `random`: a seeded uniform draw per row, made from a hash of the row's values and `seed` (not from block
      order), so a rerun on the same data gives the same split however Ray cuts the blocks.
    Fractions that sum to less than 1 leave the rest `unused`.
    """

    method: Literal["time", "hash", "random"] = "time"
    column: str | None = Field(None, description="time: the time column; None: data.time_column.")
    train: SplitValues | None = None
    val: SplitValues | None = None
    test: SplitValues | None = None
    keys: list[str] | None = Field(None, min_length=1, description="hash: the key columns.")
    fractions: dict[SplitName, float] | None = Field(
        None, description="hash / random: the share of rows per split, e.g. {train: 0.8, val: 0.1, test: 0.1}.")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> SplitConfig:
        if self.method == "time":
            for name, values in _DEFAULT_TIME_SPLIT.items():  # a split left out keeps the example's default
                if getattr(self, name) is None:
                    setattr(self, name, list(values))
            self._check_time_splits()
        else:
            for name in SPLIT_NAMES:
                if getattr(self, name) is not None:
                    raise ValueError(f"split.{name} is for method time; method {self.method} uses split.fractions")
            if self.method == "hash" and not self.keys:
                raise ValueError("split.keys is required when split.method is hash")
            self._check_fractions()
        return self

    def _check_time_splits(self) -> None:
        seen: dict[Any, str] = {}
        for name in SPLIT_NAMES:
            values = getattr(self, name)
            if values is None or (isinstance(values, list) and not values):
                raise ValueError(f"split.{name} is empty")
            for value in values if isinstance(values, list) else []:
                if value in seen:
                    raise ValueError(f"split.{name} and split.{seen[value]} both contain {value}")
                seen[value] = name
        ranges = [(name, getattr(self, name)) for name in SPLIT_NAMES if isinstance(getattr(self, name), TimeRange)]
        for index, (name, first) in enumerate(ranges):
            for other, second in ranges[index + 1:]:
                if _overlap(first, second):
                    raise ValueError(f"split.{name} and split.{other} overlap")

    def _check_fractions(self) -> None:
        fractions = self.fractions or {}
        missing = [name for name in SPLIT_NAMES if name not in fractions]
        if missing:
            raise ValueError(f"split.fractions needs train, val and test; missing {missing}")
        for name, value in fractions.items():
            if not 0 < value <= 1:
                raise ValueError(f"split.fractions.{name} must be in (0, 1], got {value}")
        if sum(fractions.values()) > 1 + 1e-9:
            raise ValueError(f"split.fractions add up to {sum(fractions.values()):g} (> 1)")


def _at_most(low: int | float | str, high: int | float | str) -> bool:
    """low <= high for two numbers or two ISO dates (ISO text sorts in time order)."""
    if isinstance(low, str) and isinstance(high, str):
        return low <= high
    if not isinstance(low, str) and not isinstance(high, str):
        return low <= high
    raise ValueError("split ranges mix numbers and dates")


def _overlap(first: TimeRange, second: TimeRange) -> bool:
    """Two half-open ranges share a value (an open end reaches everything on its side)."""
    low_a, high_a, low_b, high_b = first.start, first.end, second.start, second.end
    if any(isinstance(v, str) for v in (low_a, high_a)) != any(isinstance(v, str) for v in (low_b, high_b)):
        raise ValueError("split ranges mix numbers and dates")
    a_before_b = high_a is not None and low_b is not None and _at_most(high_a, low_b)
    b_before_a = high_b is not None and low_a is not None and _at_most(high_b, low_a)
    return not (a_before_b or b_before_a)
