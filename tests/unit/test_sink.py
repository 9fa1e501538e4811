"""The prepare stage's writer: each row written once, under its split, and a retried task writes nothing twice."""

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from mlscale.data.sink import SummarizingParquetSink, split_parts
from mlscale.data.validation import REASON_COLUMN, RULES_COLUMN


def rows(splits: list[str | None]) -> pa.Table:
    quarantined = [split == "quarantine" for split in splits]
    return pa.table({
        "x": list(range(len(splits))),
        RULES_COLUMN: pa.array([["x_range"] if bad else None for bad in quarantined], pa.list_(pa.string())),
        REASON_COLUMN: ["x out of range" if bad else None for bad in quarantined],
        "split": splits,
    })


def test_each_row_lands_in_exactly_its_splits_part_without_the_split_column():
    parts = split_parts(rows(["train", "val", "train", "quarantine", "test", "train"]), "split")
    assert {name: part.column("x").to_pylist() for name, part in parts.items()} == {
        "train": [0, 2, 5], "val": [1], "quarantine": [3], "test": [4]}
    assert all("split" not in part.column_names for part in parts.values())


def test_a_row_without_a_split_is_an_error_naming_the_column():
    with pytest.raises(ValueError, match="1 rows have no 'split'"):
        split_parts(rows(["train", None]), "split")


def test_a_task_writes_hive_partitions_and_its_retry_rewrites_the_same_files(tmp_path):
    sink = SummarizingParquetSink(str(tmp_path), pafs.LocalFileSystem(), "split", examples=2)
    task = SimpleNamespace(task_idx=3)
    for _ in range(2):  # the second call is Ray retrying the task
        summary = sink.write([rows(["train", "quarantine", "train", "val"])], task)
    assert sorted(path.relative_to(tmp_path).parent.name for path in tmp_path.rglob("*.parquet")) == [
        "split=quarantine", "split=train", "split=val"]
    written = pads.dataset(str(tmp_path), format="parquet", partitioning="hive").to_table()
    assert sorted(written.column("x").to_pylist()) == [0, 1, 2, 3]
    assert '"counts": {"train": 2, "quarantine": 1, "val": 1}' in summary
    assert sink.write([rows([])], SimpleNamespace(task_idx=4)) == '{"counts": {}}'
