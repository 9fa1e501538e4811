"""Every parquet read mlscale makes: one read task per `ray.read_unit_bytes` of files, whichever reader is set.

Ray Data's v1 reader (`ray.parquet_reader`) sizes a read by the cluster, not by the data: at least two blocks per
CPU, so a 500 kB split on a 6-CPU node becomes 12 read tasks, and a map after it starts a worker per task (a scoring
pass then loads the model in each). The v2 reader bin-packs files into read units of `read_unit_bytes` itself; the
v1 reader is given the same number of read tasks.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pyarrow.fs as pafs
import ray.data

from mlscale.cluster.connect import READ_UNIT_ENV

DEFAULT_READ_UNIT = 128 * 2**20  # Ray's own, where configure_data has not run


def read_parquet(paths: str | list[str], filesystem: pafs.FileSystem | None = None, **options: Any) -> ray.data.Dataset:
    """`ray.data.read_parquet`, with the v1 reader's read tasks counted from the files' bytes."""
    if not ray.data.DataContext.get_current().use_datasource_v2:
        unit = int(os.environ.get(READ_UNIT_ENV, DEFAULT_READ_UNIT))
        total = parquet_bytes([paths] if isinstance(paths, str) else paths, filesystem or pafs.LocalFileSystem())
        options.setdefault("override_num_blocks", max(1, math.ceil(total / unit)))
    return ray.data.read_parquet(paths, filesystem=filesystem, **options)


def parquet_bytes(paths: list[str], filesystem: pafs.FileSystem) -> int:
    """The size of the parquet files at these paths (a file, or every file under a folder)."""
    total = 0
    for info in filesystem.get_file_info(paths):
        if info.type == pafs.FileType.File:
            total += info.size or 0
        elif info.type == pafs.FileType.Directory:
            total += sum(found.size or 0 for found in filesystem.get_file_info(pafs.FileSelector(info.path,
                                                                                                recursive=True))
                         if found.type == pafs.FileType.File and found.base_name.endswith(".parquet"))
    return total
