"""The prepare stage's parquet writer, which also says what it wrote: one pass over the data instead of three.

Judging a preparation needs the rows per split and per-rule counts of the quarantine; fitting features needs
statistics of the train rows. Read back after the write, each was a further pass (and a Ray Data execution, seconds
of fixed cost each). Here every write task summarizes the block it writes and returns the summary with its write;
Ray hands the driver all of them when the write completes. Retries stay Ray's: a retried task rewrites the same
file names and returns its summary again, so nothing is counted twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from ray.data._internal.datasource.parquet_datasink import ParquetDatasink  # write_parquet's own sink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from mlscale.data.validation import rule_partials


class TrainSummary(Protocol):
    """What a later stage wants to know of the train rows, gathered while they are written (e.g. the statistics
    features are fitted on). `key` names what was summarized, so a reader can tell whether it is what it needs."""

    key: str

    def of(self, rows: pa.Table) -> dict[str, Any] | None: ...

    def combine(self, parts: list[dict[str, Any]]) -> dict[str, Any] | None: ...


class SummarizingParquetSink(ParquetDatasink):
    """Ray Data's parquet sink, partitioned by the split column, whose write tasks return what they wrote."""

    def __init__(self, path: str, filesystem: pafs.FileSystem, split_column: str, examples: int,
                 train_summary: TrainSummary | None = None) -> None:
        super().__init__(path, partition_cols=[split_column], filesystem=filesystem)
        self.split_column, self.examples, self.train_summary = split_column, examples, train_summary
        self.summaries: list[dict[str, Any]] = []

    def write(self, blocks: Iterable[Block], ctx: Any) -> str:  # type: ignore[override]
        blocks = list(blocks)
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        summary = self.summarize(pa.concat_tables(tables, promote_options="default")) if tables else {"counts": {}}
        super().write(blocks, ctx)
        return json.dumps(summary)

    def summarize(self, table: pa.Table) -> dict[str, Any]:
        splits = table.column(self.split_column)
        counts = {row["values"]: row["counts"] for row in pc.value_counts(splits).to_pylist()}
        summary: dict[str, Any] = {"counts": counts}
        if counts.get("quarantine"):
            quarantined = table.filter(pc.equal(splits, "quarantine"))
            summary["rules"] = json.loads(rule_partials(quarantined, self.examples)["partial"][0])
        if self.train_summary is not None and counts.get("train"):
            summary["train"] = self.train_summary.of(table.filter(pc.equal(splits, "train")))  # None: n/a
        return summary

    def on_write_complete(self, write_result: WriteResult[Any]) -> None:
        super().on_write_complete(write_result)
        self.summaries = [json.loads(text) for text in write_result.write_returns if text]

    def counts(self, partitions: Iterable[str]) -> dict[str, int]:
        """Rows written per split, every partition named (0 where none)."""
        return {name: sum(s["counts"].get(name, 0) for s in self.summaries) for name in partitions}

    def rule_partials(self) -> list[dict[str, Any]]:
        return [s["rules"] for s in self.summaries if "rules" in s]

    def train(self) -> dict[str, Any] | None:
        """The combined train summary, or None when none was asked for or no train rows were written."""
        parts = [s["train"] for s in self.summaries if "train" in s]
        if self.train_summary is None or not parts or any(part is None for part in parts):
            return None  # a part the summary did not apply to makes the whole summary unusable
        return self.train_summary.combine(parts)
