"""Typed pipeline configuration: one section per stage, loadable from YAML.

A bad config fails early with a message naming the field and the value, instead of a stack trace
from deep inside a stage minutes later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlscale.data.schema import ColumnSpec
from mlscale.direction import mode_of
from mlscale.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(_Section):
    address: str | None = Field(None, description="Cluster address; None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of the embedded Ray (None: Ray decides).")
    object_store_memory: int | None = Field(None, ge=78_643_200)
    include_dashboard: bool = Field(True, description="Ray Train's placement-group cleanup needs the state API.")
    read_unit_bytes: int = Field(
        8 * 2**20, ge=2**20, description="Parquet bytes one Ray Data read task takes: bounds each reader's memory."
    )
    target_max_block_size: int = Field(16 * 2**20, ge=2**20, description="Ray Data's cap on one block's size.")
    data_poll_s: float = Field(
        0.02, gt=0, le=1, description="How often Ray Data's executor looks for finished tasks (Ray's own: 0.1 s)."
    )
    data_limits_refresh_s: float = Field(
        0.1, gt=0, le=10, description="How often Ray Data's executor re-reads the cluster's resources (Ray's own: 1 s)."
    )


class StorageConfig(_Section):
    root: str = Field(".mlscale", description="Where prepared data, checkpoints and caches live.")
    prepared_uri: str | None = Field(
        None, description="The prepared splits and their manifest: a path, or s3://bucket/prefix (data.object_store "
                          "settings) that every node of a cluster reads; None: <root>/prepared.")
    prepared_retention_s: float = Field(
        7 * 86400.0, ge=0, description="How long a replaced preparation is kept: each one is a folder of its own "
                                       "(<name>/<version>), so jobs still reading an older version keep reading it; "
                                       "versions older than this, other than the committed one, are deleted.")

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser().resolve()


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; None means a sqlite store under storage.root.")
    experiment: str = "mlscale"
    registered_model: str = "flights-late-arrival"
    alias: str = Field("champion", description="The alias serving loads.")
    promotion: Literal["always", "if_better", "manual", "canary"] = Field(
        "if_better", description="After training, the new version is the challenger; if_better moves the champion "
                                 "alias to it when it beats the champion on the test split; canary judges it the "
                                 "same way but leaves the alias to a canary release (the retraining loop)."
    )
    promotion_min_delta: float = Field(0.0, ge=0, description="if_better: how much better it must be.")
    secrets: list[str] = Field(
        default_factory=list, description="Dotted config fields whose values are never logged (shown as ***); "
                                          "passwords in URLs and fields named like password/token are always hidden.")


class ObjectStoreConfig(_Section):
    """S3-compatible object storage. Credentials are read from environment variables, never from the config
    (configs are logged to MLflow as run parameters)."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None: AWS (or AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.")
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    anonymous: bool = False


class SyntheticConfig(_Section):
    """The deterministic synthetic flights source: any number of rows, generated lazily in parallel."""

    rows: int = Field(1_000_000, ge=1)
    seed: int = 0
    blocks: int | None = Field(None, ge=1, description="Read tasks; None: one per ~256k rows.")
    bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="Rows given one injected defect each.")


class DataConfig(_Section):
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


class CheckRule(_Section):
    """A cross-column rule: a boolean expression over columns, e.g. `distance / air_time * 60 <= 700`."""

    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str


class ValidationConfig(_Section):
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


class TimeRange(_Section):
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


class SplitConfig(_Section):
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


class NumericFeature(_Section):
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


class CategoricalFeature(_Section):
    """A string column: a top-k vocabulary with an out-of-vocabulary bucket, or hashing for high cardinality."""

    column: str
    hash_buckets: int | None = Field(None, ge=2, description="Hash into this many buckets instead of a vocabulary.")
    min_count: int | None = Field(None, ge=1, description="None: features.min_category_count.")
    max_categories: int | None = Field(None, ge=1, description="None: features.max_categories.")


class CrossFeature(_Section):
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


class FeaturesConfig(_Section):
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


class ModelConfig(_Section):
    """The network: a family and its own parameters (what architecture search varies)."""

    family: Literal["mlp", "resmlp", "ft_transformer"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="mlp: the hidden layer widths.")
    norm: Literal["none", "layer", "batch"] = Field("none", description="mlp: normalization after each layer.")
    width: int = Field(64, ge=1, description="resmlp: the residual stream's width.")
    blocks: int = Field(2, ge=1, description="resmlp: residual blocks.")
    d_token: int = Field(16, ge=2, description="ft_transformer: token width (divisible by heads).")
    heads: int = Field(2, ge=1)
    layers: int = Field(2, ge=1, description="ft_transformer: attention layers.")
    dropout: float = Field(0.1, ge=0, lt=1)
    embedding_cap: int = Field(16, ge=2, description="Largest embedding width of a categorical column.")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        for width in value:
            if width < 1:
                raise ValueError(f"every hidden width must be >= 1, got {width}")
        return value

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.family == "ft_transformer" and self.d_token % self.heads:
            raise ValueError(f"d_token ({self.d_token}) must be divisible by heads ({self.heads})")
        return self


class OptimizerConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only.")


class ScheduleConfig(_Section):
    """The learning rate over the run: linear warmup, then constant, cosine decay, or steps."""

    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of all steps spent warming up linearly.")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine: the final lr as a share of the peak.")
    step_every_epochs: int = Field(1, ge=1, description="step: decay every this many epochs ...")
    gamma: float = Field(0.5, gt=0, le=1, description="step: ... by this factor.")


class EarlyStoppingConfig(_Section):
    """Stop when the validation metric has not improved by min_delta for `patience` evaluations in a row."""

    enabled: bool = True
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)


class CheckpointSettings(_Section):
    every_n_steps: int | None = Field(
        None, ge=1, description="Evaluate and checkpoint every this many steps; None: at the end of every epoch."
    )
    keep: int = Field(2, ge=1, description="Checkpoints kept: the best by the validation metric.")


class TrainConfig(_Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="With use_gpu: GPUs reserved per worker (NCCL).")
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU).")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1, description="Rows per step on each worker.")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; None: no clipping.")
    metric: str | None = Field(
        None, description="Validation metric for best checkpoints and early stopping; None: val_auc, or val_rmse."
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    max_failures: int = Field(1, ge=-1, description="Worker failures to recover from (-1: unlimited).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Where the workers go: PACK fills a node first (fast collectives); SPREAD puts them on "
                            "different nodes when it can, so one lost node costs one worker, and the restart packs "
                            "onto what is left (STRICT_SPREAD would wait for a replacement node instead).")
    materialize_mb: int = Field(
        2048, ge=0, description="Featurized training parquet up to this size is read once into the object store "
                                "instead of once per epoch (and the validation split too when both fit); larger "
                                "splits stream every epoch."
    )
    cache_train_mb: int = Field(
        1024, ge=0, description="Each worker holds its train shard as tensors when they take less than this, and "
                                "shuffles it whole each epoch; a larger shard streams through Ray Data every epoch."
    )
    cache_val_mb: int = Field(
        512, ge=0, description="Each worker keeps its validation shard in memory when it is smaller than this."
    )
    storage_uri: str | None = Field(
        None, description="Checkpoints: a path or s3://bucket/prefix (data.object_store settings); "
                          "None: <storage.root>/train."
    )
    run_name: str | None = Field(
        None, description="Ray Train run name; a rerun with the same name resumes from its checkpoints. None: named "
                          "from the config and data, so an interrupted job resumes when resubmitted."
    )


class Distribution(_Section):
    """One searched value: `choices` (categorical), or low/high (int when both are integers; `log` for scales)."""

    choices: list[Any] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices, or both low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low:g}")
        return self

    @property
    def is_int(self) -> bool:
        if self.choices is not None or self.low is None or self.high is None:
            return False
        return float(self.low).is_integer() and float(self.high).is_integer() and (
            self.step is None or float(self.step).is_integer())


def _int_range(value: Any) -> Any:
    """[lo, hi] is shorthand for {low: lo, high: hi}."""
    return {"low": value[0], "high": value[1]} if isinstance(value, list | tuple) and len(value) == 2 else value


Norm = Literal["none", "layer", "batch"]
Family = Literal["mlp", "resmlp", "ft_transformer"]


def _all_norms() -> list[Norm]:
    return ["none", "layer", "batch"]


def _default_families() -> list[Family]:
    return ["mlp", "resmlp"]


class MlpSpace(_Section):
    layers: Distribution = Field(default_factory=lambda: Distribution(low=1, high=3))
    width: Distribution = Field(default_factory=lambda: Distribution(low=16, high=256, log=True),
                                description="Each layer's width, searched per layer that exists.")
    norm: list[Norm] = Field(default_factory=_all_norms)

    _ranges = field_validator("layers", "width", mode="before")(lambda value: _int_range(value))


class ResMlpSpace(_Section):
    blocks: Distribution = Field(default_factory=lambda: Distribution(low=1, high=4))
    width: Distribution = Field(default_factory=lambda: Distribution(low=32, high=256, log=True))

    _ranges = field_validator("blocks", "width", mode="before")(lambda value: _int_range(value))


class FtTransformerSpace(_Section):
    layers: Distribution = Field(default_factory=lambda: Distribution(low=1, high=3))
    d_token: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1)
    heads: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1,
                             description="Only the head counts that divide the trial's d_token are offered.")

    _ranges = field_validator("layers", mode="before")(lambda value: _int_range(value))

    @model_validator(mode="after")
    def _some_heads_divide(self) -> FtTransformerSpace:
        for d_token in self.d_token:
            if not any(d_token % heads == 0 for heads in self.heads):
                raise ValueError(f"no value of heads {self.heads} divides d_token {d_token}")
        return self


class ArchitectureSpace(_Section):
    """Neural architecture search: the family, then only that family's own choices (conditional parameters)."""

    families: list[Family] = Field(default_factory=_default_families, min_length=1)
    mlp: MlpSpace = Field(default_factory=MlpSpace)
    resmlp: ResMlpSpace = Field(default_factory=ResMlpSpace)
    ft_transformer: FtTransformerSpace = Field(default_factory=FtTransformerSpace)


def _default_params() -> dict[str, Distribution]:
    return {
        "train.optimizer.lr": Distribution(low=3e-4, high=3e-2, log=True),
        "train.batch_size": Distribution(choices=[128, 256, 512]),
        "train.optimizer.weight_decay": Distribution(low=1e-6, high=1e-2, log=True),
        "train.model.dropout": Distribution(low=0.0, high=0.3),
    }


class SearchSpace(_Section):
    params: dict[str, Distribution] = Field(
        default_factory=_default_params, description="Dotted config field -> distribution (hyperparameters).")
    architecture: ArchitectureSpace | None = Field(
        default_factory=ArchitectureSpace, description="None: keep train.model as configured.")

    @field_validator("params")
    @classmethod
    def _known_fields(cls, value: dict[str, Distribution]) -> dict[str, Distribution]:
        for dotted in value:
            node: Any = PipelineConfig.model_fields
            for part in dotted.split("."):
                field = node.get(part) if isinstance(node, dict) else None
                if field is None:
                    raise ValueError(f"{dotted!r} is not a config field")
                annotation = field.annotation
                node = annotation.model_fields if isinstance(annotation, type) and issubclass(
                    annotation, BaseModel) else None
        return value


class SchedulerSettings(_Section):
    name: Literal["asha", "none"] = Field("asha", description="asha: stop trials behind their peers early.")
    grace_period: float = Field(1.0, gt=0, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="Only 1/reduction_factor of trials go on at each rung.")


class TuneSettings(_Section):
    num_trials: int = Field(12, ge=1, description="Trial budget.")
    time_budget_s: float | None = Field(None, gt=0, description="Time budget: no new trials after this, "
                                                                "running ones are stopped.")
    epoch_budget: float | None = Field(
        None, gt=0, description="Trial-epoch budget: no new trials once the trials together have trained this many "
                                "epochs (a pruned trial costs only the epochs it ran).")
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int = Field(5, ge=1, description="tpe: random trials before the model of good and bad regions "
                                                     "takes over.")
    seed: int = 0
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    space: SearchSpace = Field(default_factory=SearchSpace)
    trial_workers: int = Field(
        1, ge=0, description="Ray Train workers per trial; 0 trains inside the trial's own process (small models, "
                             "where starting a worker group costs more than the training).")
    driver_cpus: float = Field(0.1, gt=0, description="CPU reserved for each trial's driver, which only waits on its "
                                                       "Ray Train run (with trial_workers: 0 it trains: 1 CPU).")
    data_cpus: float = Field(1.0, ge=0, description="CPUs kept free for Ray Data tasks, so trials never starve "
                                                     "their own data reads.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: as many as the cluster fits.")
    cost: Literal["params", "latency_ms"] | None = Field(
        None, description="Multi-objective: also minimize this model cost; the result includes the Pareto front.")
    max_cost: float | None = Field(None, gt=0, description="With cost: the registered winner must cost at most this.")
    name: str | None = Field(None, description="Sweep name; a rerun with the same name resumes it. None: named from "
                                               "the config and data, so an interrupted job resumes when resubmitted.")
    storage_uri: str | None = Field(None, description="Tune's experiment storage: a path or s3://; "
                                                      "None: <storage.root>/tune.")
    study_storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study database; None: sqlite beside the experiment.")


class ServeAutoscaling(_Section):
    """Ray Serve's autoscaler for the model deployment: replicas follow ongoing requests per replica."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica the autoscaler steers toward.")
    upscale_delay_s: float = Field(2.0, ge=0, description="Load must stay above target this long before scaling up.")
    downscale_delay_s: float = Field(
        30.0, ge=0, description="Load must stay below target this long before scaling down.")
    metrics_interval_s: float = Field(1.0, gt=0, description="How often replicas report their load.")
    look_back_period_s: float = Field(5.0, gt=0, description="The window the load is averaged over.")

    @model_validator(mode="after")
    def _bounds(self) -> ServeAutoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class CanaryConfig(_Section):
    """A challenger served beside the champion on a share of live traffic, judged on it, then promoted or rolled
    back automatically (`mlscale canary`)."""

    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of requests the challenger answers.")
    sticky_header: str | None = Field(
        None, description="A request header (e.g. X-User-Id) whose value picks the version, so one caller always "
                          "meets the same model; None: each request is drawn at random.")
    min_requests: int = Field(200, ge=1, description="Challenger requests seen before anything is decided.")
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0, description="Challenger failures per request allowed.")
    max_p99_ratio: float = Field(1.5, ge=1.0, description="Challenger p99 latency allowed, as a multiple of the "
                                                           "champion's on the same replicas.")
    p99_floor_ms: float = Field(20.0, ge=0, description="A p99 excess below this many ms never rolls back (noise).")
    max_prediction_shift: float = Field(
        0.05, gt=0, description="Largest mean |challenger - champion| on the same records, in units of the label's "
                                "scale (1 for probabilities, the label's std for regression).")
    min_paired_records: int = Field(
        100, ge=1, description="Challenger records also predicted by the champion (the shadow comparison) before a "
                               "promotion: a release is judged on a measured prediction shift, never an unknown one.")
    auto_promote: bool = Field(True, description="Promote when min_requests pass every threshold; False: hold the "
                                                 "canary (rollback still automatic).")
    check_interval_s: float = Field(1.0, gt=0, description="How often the live numbers are read and judged.")
    timeout_s: float = Field(3600.0, gt=0, description="No decision by then: roll back (the canary saw too little "
                                                       "traffic to be judged).")
    lease_s: float = Field(
        15.0, gt=0, description="The challenger keeps its share only while the watcher renews this lease (every "
                                "check): a watcher that dies (Ctrl-C, a stopped or killed job, a lost node) leaves "
                                "the champion serving alone within this time. A held canary is leased for "
                                "timeout_s.")

    @model_validator(mode="after")
    def _lease_outlasts_a_check(self) -> CanaryConfig:
        if self.lease_s <= self.check_interval_s + 1.0:  # the replicas hear of a renewal within a second
            raise ValueError(f"lease_s ({self.lease_s:g}) must exceed check_interval_s ({self.check_interval_s:g}) "
                             f"+ 1 s, or the challenger loses its share between two renewals")
        return self


class PredictionCacheConfig(_Section):
    """Answers remembered per replica, keyed on the validated record and the version that predicted it."""

    max_entries: int = Field(100_000, ge=1)
    max_bytes: int = Field(
        64 * 2**20, ge=1024, description="Memory the cached keys may take per replica (a key is the record's text): "
                                         "past it the least recently used go, so long text fields cannot fill RAM.")
    ttl_s: float = Field(300.0, gt=0, description="An answer older than this is predicted again.")


class PredictionLogConfig(_Section):
    """What the service was asked and answered, sampled, written to parquet in batches off the request path."""

    path: str | None = Field(None, description="A folder or object-storage URI (s3://...); None: "
                                               "<storage.root>/predictions/<name>.")
    sample_rate: float = Field(1.0, gt=0.0, le=1.0, description="Share of requests logged.")
    flush_records: int = Field(5_000, ge=1, description="Write when this many records wait.")
    flush_interval_s: float = Field(5.0, gt=0, description="Write at least this often.")
    max_pending_records: int = Field(
        200_000, ge=1, description="Records kept while storage is failing; past it the oldest are dropped (counted).")
    max_pending_bytes: int = Field(
        128 * 2**20, ge=1024, description="Memory the pending rows may take (their text and numbers, estimated): "
                                          "the same drop-oldest bound by size, so long text cannot fill RAM.")
    shutdown_flush_s: float = Field(
        10.0, gt=0, description="A replica shutting down (a rolling update, a scale-down) writes what is pending "
                                "within this time (below Serve's graceful_shutdown_timeout_s of 20 s).")


class GraphConfig(_Section):
    """More than one model behind one endpoint, each its own deployment (own replicas, own autoscaling)."""

    mode: Literal["fallback", "ensemble"]
    models: list[str] = Field(..., min_length=2, description="fallback: the main model, then what answers when it "
                                                               "is overloaded or failing; ensemble: the averaged "
                                                               "models (models:/ URIs, aliases resolved at deploy).")
    weights: list[float] | None = Field(None, description="ensemble: one weight per model (default equal).")
    timeout_s: float = Field(5.0, gt=0, description="fallback: how long the main model may take.")
    model_cpus: float = Field(0.5, gt=0, description="CPUs per replica of each model deployment.")
    num_replicas: int = Field(1, ge=1, description="Replicas per model when autoscaling is off.")
    autoscaling: ServeAutoscaling | None = Field(
        None, description="Set: each model's deployment scales on its own load between these bounds.")
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica of each ensemble model, or of the main "
                                                             "model of a fallback (its fallbacks get the serve "
                                                             "section's own, larger limits).")
    max_queued_requests: int = Field(64, ge=1, description="Past it the model refuses at once (and, in fallback "
                                                            "mode, the next model answers).")

    @model_validator(mode="after")
    def _weights(self) -> GraphConfig:
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.models)} models")
        return self


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "mlscale"
    route_prefix: str = "/"
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs an HTTP proxy: on every node (a load balancer in front reaches "
                                 "any of them) or on the head only (several raylets on one machine share a port).")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is off.")
    autoscaling: ServeAutoscaling | None = Field(
        None, description="Set: the replica count follows the load between min_replicas and max_replicas.")
    model_cpus: float = Field(
        1.0, gt=0, description="CPUs reserved per replica (each replica is the HTTP ingress and the model); one "
                               "intra-op thread per reserved CPU.")
    replica_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each model replica asks for, e.g. {serve: 1}: "
                                          "replicas then run only on node groups that carry it (the cluster "
                                          "definition's on-demand serve group), never on spot capacity.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on at once; more wait in the caller's queue.")
    max_batch_size: int = Field(64, ge=1, description="Requests merged into one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a batch waits for more requests after its first. 0: it takes whatever "
                               "queued while the previous batch ran (no added latency when idle, full batches "
                               "under load).")
    max_records_per_request: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="Larger request bodies get a 413 before parsing "
                                                                 "(a chunked body is read only up to the limit).")
    unknown_fields: Literal["reject", "ignore"] = Field(
        "reject", description="A record field the input schema does not declare: reject (a 422 naming it, so a "
                              "misspelt optional field is not silently imputed as missing) or ignore (dropped, for "
                              "callers that send more). The dataset's other columns (its label, unused columns) "
                              "are accepted and ignored either way.")
    max_queued_requests: int = Field(
        512, ge=1, description="Requests waiting per deployment beyond its replicas' capacity; past it callers get "
                               "a 503 at once instead of queueing without bound.")
    overload_status: Literal[503, 429] = Field(
        503, description="The status a request refused for overload gets (past max_queued_requests).")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After sent with an overload refusal.")
    access_log: bool = Field(
        False, description="Serve's access log line per request (costs ~5% of a replica's CPU at full load); "
                           "requests, errors and latency are counted in the Prometheus metrics either way.")
    api_keys_env: str | None = Field(
        None, description="Name of an environment variable holding comma-separated API keys; set: /predict and "
                          "/schema need `Authorization: Bearer <key>` (401 without), /health stays open.")
    api_keys_file: str | None = Field(
        None, description="A file holding API keys, one per line (# comments allowed), e.g. a mounted Kubernetes "
                          "secret; combined with api_keys_env when both are set.")
    request_timeout_s: float | None = Field(
        30.0, gt=0, description="End-to-end HTTP request timeout (408); applied when Serve starts on the cluster.")
    variant: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: Linear layers dynamically quantized for CPU serving; deploy measures its metric "
                            "against fp32 on the test split and refuses it beyond int8_max_metric_drop.")
    int8_max_metric_drop: float = Field(0.005, ge=0, description="Largest loss of the test metric int8 may cost.")
    cache: PredictionCacheConfig | None = Field(None, description="Set: repeated records are answered from memory.")
    prediction_log: PredictionLogConfig | None = Field(
        None, description="Set: requests are logged (features, prediction, version, request id, time) for "
                          "monitoring and label joins.")
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    graph: GraphConfig | None = Field(None, description="Set: deploy a fallback or ensemble graph instead.")
    compare_rows: int = Field(128, ge=1, description="Held-out rows served and compared with batch scoring.")
    compare_rtol: float = Field(
        1e-5, ge=0, description="Served vs batch: allowed difference relative to the prediction (float32 rounding "
                                "grows with the value: labels in the thousands differ by ~1e-3).")
    compare_atol: float = Field(
        1e-6, ge=0, description="Served vs batch: allowed absolute difference, in units of the label's scale "
                                "(1 for probabilities, the label's standard deviation for regression).")


class ScoreConfig(_Section):
    """Batch inference over the data section's source (`mlscale score`)."""

    model: str | None = Field(None, description="models:/name@alias or models:/name/<version>; None: the serving "
                                                "alias (tracking.registered_model @ tracking.alias).")
    output: str | None = Field(None, description="Where the scores go; None: <storage.root>/scores/<name>.")
    columns: list[str] | None = Field(
        None, description="Input columns written beside each prediction; None: validation.unique when set (the "
                          "rows' key), else every input column.")
    actors: int | None = Field(
        None, ge=1, description="Model replicas scoring in parallel (a Ray Data actor pool; Ray Data fuses reading "
                                "and validation into them); None: autoscaled from 1 to the cluster's CPUs.")
    batch_size: int = Field(4096, ge=1)


class InvarianceCheck(_Section):
    """Changing this field to each of these values moves predictions by at most max_mean_shift on average."""

    column: str
    values: list[Any] = Field(..., min_length=1)
    max_mean_shift: float = Field(0.02, gt=0)


class DirectionalCheck(_Section):
    """Adding delta to this numeric field moves the average prediction the expected way (never the other)."""

    column: str
    delta: float
    direction: Literal["up", "down"]


class MinimumCase(_Section):
    """A hand-written record and the range its prediction must fall in."""

    name: str
    record: dict[str, Any]
    min: float | None = None
    max: float | None = None


class BehaviourConfig(_Section):
    rows: int = Field(500, ge=10, description="Held-out rows the invariance and directional checks perturb.")
    invariance: list[InvarianceCheck] = Field(default_factory=list)
    directional: list[DirectionalCheck] = Field(default_factory=list)
    minimum: list[MinimumCase] = Field(default_factory=list)


class EvaluateConfig(_Section):
    slices: list[str] = Field(default_factory=lambda: ["carrier", "origin"], description="Metrics per value.")
    min_slice_rows: int = Field(100, ge=1, description="Smaller slices are reported as too small, not scored.")
    calibration_bins: int = Field(15, ge=2, le=100)
    behaviour: BehaviourConfig = Field(default_factory=BehaviourConfig)


class LabelsConfig(_Section):
    """Where labels that arrive after the predictions are (for flights: the arrival delay, hours later)."""

    path: str = Field(..., description="A parquet file or folder (local or a pyarrow filesystem URI), or a .csv.")
    on: list[str] = Field(["request_id"], min_length=1,
                          description="Columns both the labels and the prediction log carry: the request id the "
                                      "service returned (with record_index for multi-record requests), or a key.")
    column: str | None = Field(None, description="The label column; None: data.label.")


class RetrainConfig(_Section):
    """The retraining loop: what the monitor does when the newest judged window drifts or decays."""

    enabled: bool = Field(False, description="Off: the monitor reports and logs the decision it would take.")
    on: list[Literal["drift", "decay"]] = Field(["drift", "decay"], min_length=1, description="What triggers.")
    train_windows: int = Field(3, ge=1, description="Recent labelled windows the new model trains on.")
    val_windows: int = Field(1, ge=1, description="The windows after those: early stopping and checkpoints.")
    test_windows: int = Field(
        1, ge=1, description="The newest labelled windows: the new model is judged against the champion on them.")
    min_delta: float = Field(
        0.0, ge=0, description="How much better than the champion the new model must be on the newest labelled "
                               "data to start a canary (it must pass its behavioural checks too).")
    cooldown_s: float = Field(86_400.0, ge=0, description="No retrain starts sooner than this after the last one.")
    max_per_day: int = Field(2, ge=1, description="At most this many retrains start in any 24 hours.")
    jobs_address: str | None = Field(
        None, description="The Jobs API (dashboard) URL the retrain job is submitted to; None: "
                          "RAY_API_SERVER_ADDRESS, else the connected cluster's dashboard.")
    wait: bool = Field(True, description="Follow the retrain job to its end and record its outcome (an embedded "
                                         "local Ray lives only as long as the monitor that started it).")
    timeout_s: float = Field(3600.0, gt=0, description="How long a followed retrain job may take.")
    search_trials: int = Field(
        0, ge=0, description="More than 0: the retrain is a small search (the tune section's space, scheduler and "
                             "sampler, this many trials) instead of one training run; its winner is judged.")


class MonitorConfig(_Section):
    """Drift and decay of live traffic (the prediction log) against the serving model (`mlscale monitor`), and the
    retraining they trigger."""

    window: Literal["hour", "day", "column", "count"] = Field(
        "day", description="How the logged requests are cut into windows: by the time they were served, by the "
                           "value of a logged column (window_column, e.g. the flights' month: event time), or every "
                           "window_rows logged rows in the order they were served.")
    window_column: str | None = Field(None, description="window: column: the logged input column to cut by.")
    window_rows: int = Field(10_000, ge=1, description="window: count: rows per window.")
    min_window_rows: int = Field(100, ge=1, description="Smaller windows are reported as too small, not judged.")
    drift_threshold: float = Field(
        0.2, gt=0, description="A window drifts when the mean PSI over the features passes this (0.1 moderate, "
                               "0.25 large by the usual reading).")
    feature_threshold: float = Field(0.25, gt=0, description="A feature drifts when its PSI passes this ...")
    feature_p_value: float = Field(
        0.01, gt=0, le=1, description="... and its test (KS or chi-square) puts the difference beyond sampling noise "
                                      "at this level: PSI alone grows with the number of categories over the rows "
                                      "in a window, so a small window of a many-valued column can pass the PSI "
                                      "threshold by chance (1 = PSI alone). Prediction drift uses the same rule.")
    prediction_threshold: float = Field(
        0.25, gt=0, description="The predictions drift when their PSI against the first judged window of the same "
                                "version passes this and its test rejects at feature_p_value (reported; a trigger only "
                                "through drift or decay).")
    labels: LabelsConfig | None = Field(None, description="Set: live performance per window, and decay.")
    max_metric_drop: float = Field(
        0.03, ge=0, description="A window decays when the model's live metric (train.metric, on the window's "
                                "labelled rows) is worse than its test metric by more than this.")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @model_validator(mode="after")
    def _window_column(self) -> MonitorConfig:
        if self.window == "column" and not self.window_column:
            raise ValueError("monitor.window_column is required when monitor.window is 'column'")
        return self


class ReplayConfig(_Section):
    """`mlscale replay`: later windows of the source (e.g. months) sent through the HTTP service as live traffic,
    one window after another, labels arriving `label_lag` windows late, the monitor run after each window."""

    windows: list[Any] = Field(default_factory=lambda: list(range(5, 13)), min_length=1,
                               description="Values of monitor.window_column to replay, in order.")
    rows_per_window: int = Field(1000, ge=1, description="Rows drawn (seeded) from each window and sent.")
    label_lag: int = Field(1, ge=0, description="A window's labels arrive this many windows later.")
    clients: int = Field(4, ge=1, description="Concurrent HTTP clients.")
    records_per_request: int = Field(50, ge=1)
    seed: int = 0


class PipelineConfig(_Section):
    name: str = Field(
        "flights", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$",
        description="The pipeline's name: folders under storage.root are named by it, so it is a plain identifier "
                    "(letters, digits, _ and -; no dots, slashes or spaces).")
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)

    @property
    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{self.storage.root_path / 'mlflow.db'}"

    @property
    def serving_uri(self) -> str:
        """The model serving loads by default: models:/<tracking.registered_model>@<tracking.alias>."""
        return f"models:/{self.tracking.registered_model}@{self.tracking.alias}"

    def trial_reservation(self) -> tuple[dict[str, float], dict[str, float]]:
        """What one search trial reserves: (its own process, its Ray Train workers together). A trial that trains
        in its own process reserves one worker's share there and no workers."""
        tune, train = self.tune, self.train
        gpu = "GPU" if train.use_gpu else None
        if tune.trial_workers == 0:
            return {"CPU": train.cpus_per_worker, **({gpu: train.gpus_per_worker} if gpu else {})}, {}
        workers = {"CPU": tune.trial_workers * train.cpus_per_worker,
                   **({gpu: tune.trial_workers * train.gpus_per_worker} if gpu else {})}
        return {"CPU": tune.driver_cpus}, workers

    @property
    def metric(self) -> tuple[str, Literal["max", "min"]]:
        """The validation metric that picks the best checkpoint and stops early, and its direction."""
        name = self.train.metric or ("val_auc" if self.data.task == "classification" else "val_rmse")
        return name, mode_of(name)

    @property
    def metric_stem(self) -> str:
        """The metric without its split: `auc` for val_auc; test_<stem> and live_<stem> name it on other data."""
        return self.metric[0].removeprefix("val_")

    def fingerprint(self) -> str:
        """A stable hash of the settings that change a training run's results (lineage, caching); a search's settings
        are not among them: each trial's config has its own hash."""
        payload = self.model_dump(mode="json", exclude={"ray", "serve", "score", "monitor", "tracking", "tune",
                                                         "replay"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default} in one string value so one YAML serves laptop and cluster (and a secret
    travels to a job or a replica as a reference to the variable that holds it, never as its value)."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"environment variable {name} is not set and has no default (${{{name}:-...}})")
            return default
        return value

    return _ENV_PATTERN.sub(replace, text)


def _expand_values(node: Any) -> Any:
    """${VAR} expanded inside parsed string values only: comments are never read, and a variable holding a newline
    or ' #' stays one value instead of changing the YAML's structure. A value that is one reference expanding to
    nothing (`address: ${MLSCALE_RAY_ADDRESS:-}`) is unset (null), as an empty YAML value is."""
    if isinstance(node, dict):
        return {key: _expand_values(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_values(value) for value in node]
    if not isinstance(node, str):
        return node
    expanded = expand_env(node)
    return None if expanded == "" and _ENV_PATTERN.fullmatch(node.strip()) else expanded


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid pipeline config ({source}):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {field}: {item['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "dict") -> PipelineConfig:
    """A config from a nested dict (as YAML would give it).

    Args:
        data: the sections and their values, e.g. {"train": {"epochs": 2}}.
        source: where the data came from, named in error messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: a field is unknown or a value is invalid; the message names each field and value.
    """
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


EXAMPLES = Path(__file__).with_name("configs")  # shipped in the package: a plain `pip install` can run them


def example_config(name: str | Path) -> Path | None:
    """A built-in example config by name (`flights`, `flights-small`), when `name` is not a file of its own."""
    if Path(name).exists() or Path(name).name != str(name):
        return None
    found = EXAMPLES / f"{Path(name).name.removesuffix('.yaml')}.yaml"
    return found if found.is_file() else None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a YAML pipeline config, then apply dotted overrides.

    `${VAR}` and `${VAR:-default}` are expanded inside string values (never in comments or keys), the overrides'
    values included.

    Args:
        path: the YAML file, or the name of a built-in example (`flights`, `flights-small`); None starts from the
            built-in defaults (the flights example).
        overrides: dotted field -> value, e.g. {"train.epochs": 2, "serve.port": 8001}, applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or not YAML, a variable is unset, or a field or value is invalid.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = example_config(path) or Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (or name a built-in example: "
                              f"{', '.join(sorted(p.stem for p in EXAMPLES.glob('*.yaml')))})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
        source = str(path)
        data = _expand_values(data)
    for dotted, value in _expand_values(overrides or {}).items():  # ${VAR} as in the file: how secrets travel
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data, source)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.epochs=2", "serve.port=8001"] -> {"train.epochs": 2, ...}; values are parsed as JSON when they can be."""
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override must look like key=value, got {item!r}")
        try:
            pairs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key.strip()] = value
    return pairs
