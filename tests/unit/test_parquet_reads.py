"""Every parquet read goes through mlscale.data.parquet: the reader comes from `ray.parquet_reader`, and Ray's v1
reader is given one read task per read unit of bytes (on its own it makes two blocks per CPU of the cluster)."""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray.data

from mlscale.cluster.connect import READ_UNIT_ENV, configure_data
from mlscale.config import RayConfig
from mlscale.data import parquet
from mlscale.data.parquet import parquet_bytes


def write_parts(folder, parts: int, rows: int = 1000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        pq.write_table(pa.table({"x": np.arange(part * rows, (part + 1) * rows)}), folder / f"part-{part}.parquet")


def test_the_bytes_of_a_read_are_its_parquet_files_under_every_path(tmp_path):
    write_parts(tmp_path / "split=train" / "month=1", 2)
    write_parts(tmp_path / "split=train" / "month=2", 1)
    (tmp_path / "split=train" / "_SUCCESS").write_text("not data")
    files = sorted((tmp_path / "split=train").rglob("*.parquet"))
    sizes = [path.stat().st_size for path in files]
    local = pafs.LocalFileSystem()
    assert parquet_bytes([str(tmp_path / "split=train")], local) == sum(sizes)
    assert parquet_bytes([str(files[0]), str(files[1])], local) == sizes[0] + sizes[1]
    assert parquet_bytes([str(tmp_path / "absent")], local) == 0


@pytest.fixture
def context():
    """Ray Data's context as it was before the test."""
    current = ray.data.DataContext.get_current()
    saved = current.use_datasource_v2
    yield current
    current.use_datasource_v2 = saved


def test_the_reader_is_the_configured_one_and_v1_reads_one_task_per_read_unit(tmp_path, monkeypatch, context):
    write_parts(tmp_path, 6)
    total = parquet_bytes([str(tmp_path)], pafs.LocalFileSystem())
    calls = []
    monkeypatch.delenv(READ_UNIT_ENV, raising=False)  # configure_data sets it: put back as it was after the test
    monkeypatch.setattr(parquet.ray.data, "read_parquet", lambda paths, **options: calls.append(options))
    configure_data(RayConfig(parquet_reader="v2"))
    assert context.use_datasource_v2
    parquet.read_parquet(str(tmp_path))
    assert "override_num_blocks" not in calls[-1]  # v2 bin-packs by itself
    configure_data(RayConfig())
    assert not context.use_datasource_v2
    monkeypatch.setenv(READ_UNIT_ENV, str(total // 3 + 1))
    parquet.read_parquet(str(tmp_path))
    assert calls[-1]["override_num_blocks"] == 3
    monkeypatch.setenv(READ_UNIT_ENV, str(10 * total))
    parquet.read_parquet([str(tmp_path)], filesystem=pafs.LocalFileSystem(), columns=["x"])
    assert calls[-1]["override_num_blocks"] == 1 and calls[-1]["columns"] == ["x"]
