"""The prepare stage: source -> validate (quarantine with a reason) -> time split -> parquet, in one streaming pass.

Every input row lands in exactly one partition of the output (train, val, test, quarantine, or unused when its
time falls in no split), and the counts are checked to reconcile with the rows read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray.data

from mlscale.config import PipelineConfig
from mlscale.data.flights import FLIGHTS_SCHEMA, read_flights, source_fingerprint
from mlscale.data.schema import REASON_COLUMN, ColumnSpec, conform, quarantine_reasons
from mlscale.data.storage import atomic_directory

SPLIT_COLUMN = "split"
PARTITIONS = ("train", "val", "test", "quarantine", "unused")


@dataclass
class PreparedData:
    """Where the prepared splits are, how many rows each holds, and what was read."""

    path: str
    rows_read: int
    counts: dict[str, int]
    data_fingerprint: str
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def split_path(self, name: str) -> str:
        return str(Path(self.path) / f"{SPLIT_COLUMN}={name}")

    def read(self, name: str) -> ray.data.Dataset:
        return ray.data.read_parquet(self.split_path(name))

    @property
    def valid_rows(self) -> int:
        return sum(self.counts[name] for name in PARTITIONS if name != "quarantine")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PreparedData:
        return cls(**json.loads(text))


def schema_for(config: PipelineConfig) -> list[ColumnSpec]:
    return config.data.schema_ or FLIGHTS_SCHEMA


def split_lookup(config: PipelineConfig) -> dict[int, str]:
    return {value: name for name in ("train", "val", "test") for value in getattr(config.split, name)}


def validate_and_split(batch: pa.Table, specs: list[ColumnSpec], time_column: str,
                       splits: dict[int, str]) -> pa.Table:
    """Add the quarantine reason and the split each row belongs to."""
    table = conform(batch, specs)
    reasons = quarantine_reasons(table, specs)
    time = table.column(time_column).fill_null(-1).to_numpy()
    assigned = np.full(table.num_rows, "unused", dtype=object)
    for value, name in splits.items():
        assigned[time == value] = name
    assigned[reasons.is_valid().to_numpy(zero_copy_only=False)] = "quarantine"
    return table.append_column(REASON_COLUMN, reasons).append_column(SPLIT_COLUMN, pa.array(assigned, pa.string()))


def count_rows(path: Path) -> int:
    return pads.dataset(path, format="parquet").count_rows() if path.exists() else 0


def summarize_reasons(path: Path) -> dict[str, int]:
    """How many quarantined rows broke each rule (a row may break several)."""
    if not path.exists():
        return {}
    counts: Counter[str] = Counter()
    for batch in pads.dataset(path, format="parquet").to_batches(columns=[REASON_COLUMN]):
        for text in batch.column(0).to_pylist():
            counts.update(part.split(" (value")[0] for part in text.split("; "))
    return dict(counts.most_common())


def prepare(config: PipelineConfig) -> PreparedData:
    """Read, validate, split and write the source; returns where everything went and the reconciled counts."""
    root = config.storage.root_path
    source = read_flights(root / "cache", config.data.read_blocks, config.data.sample_fraction)
    rows_read = source.count()
    target = root / "prepared" / config.name
    specs = schema_for(config)
    validated = source.map_batches(
        validate_and_split,
        fn_kwargs={"specs": specs, "time_column": config.data.time_column, "splits": split_lookup(config)},
        batch_format="pyarrow",
        batch_size=None,
    )
    with atomic_directory(target) as staging:
        validated.write_parquet(str(staging), partition_cols=[SPLIT_COLUMN])
    counts = {name: count_rows(target / f"{SPLIT_COLUMN}={name}") for name in PARTITIONS}
    if sum(counts.values()) != rows_read:
        raise RuntimeError(f"row counts do not reconcile: read {rows_read}, wrote {counts}")
    prepared = PreparedData(
        path=str(target),
        rows_read=rows_read,
        counts=counts,
        data_fingerprint=f"{source_fingerprint()}-{config.data.sample_fraction:g}",
        quarantine_reasons=summarize_reasons(target / f"{SPLIT_COLUMN}=quarantine"),
    )
    (target.parent / f"{config.name}.json").write_text(prepared.to_json())
    return prepared


def load_prepared(config: PipelineConfig) -> PreparedData:
    """The last prepare run's result for this pipeline, for stages run as separate jobs."""
    manifest = config.storage.root_path / "prepared" / f"{config.name}.json"
    if not manifest.exists():
        raise FileNotFoundError(f"no prepared data at {manifest}: run the prepare stage first (jobs/prepare.py)")
    return PreparedData.from_json(manifest.read_text())
