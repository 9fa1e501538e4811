"""The prediction log: what the service was asked and what it answered, for monitoring and for joining labels later.

A sampled share of requests is kept in memory (the validated records, the predictions, the version, the request id
Serve gives every request, the time) and written to parquet in batches by a background task, off the request path:
`<path>/date=YYYY-MM-DD/<replica>-<sequence>.parquet`, on local disk or object storage (any pyarrow filesystem URI).
A failed write (storage down) keeps the rows for the next attempt, up to a bound; past it the oldest are dropped and
counted. Nothing here can fail or wait a request: `offer` only appends to a list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlscale.data.schema import ColumnSpec, arrow_schema

log = logging.getLogger(__name__)
META_FIELDS = [pa.field("request_id", pa.string()), pa.field("record_index", pa.int32()),
               pa.field("timestamp", pa.timestamp("ms", tz="UTC")), pa.field("model_version", pa.string()),
               pa.field("prediction", pa.float64())]


def default_log_path(storage_root: Path, name: str) -> str:
    """Where a pipeline's prediction log goes when serve.prediction_log.path is not set."""
    return str(storage_root / "predictions" / name)


@dataclass(frozen=True)
class LogSettings:
    path: str
    sample_rate: float = 1.0
    flush_records: int = 5_000
    flush_interval_s: float = 5.0
    max_pending_records: int = 200_000


@dataclass
class LogCounts:
    offered: int = 0  # records of sampled requests
    written: int = 0
    dropped: int = 0  # past max_pending_records while storage was failing
    failed_writes: int = 0


@dataclass
class PredictionLog:
    settings: LogSettings
    input_schema: list[ColumnSpec]
    writer_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    pending: list[dict[str, Any]] = field(default_factory=list)
    counts: LogCounts = field(default_factory=LogCounts)
    sequence: int = 0

    def __post_init__(self) -> None:
        self.schema = pa.schema([*META_FIELDS, *arrow_schema(self.input_schema)])
        self.filesystem, self.root = pafs.FileSystem.from_uri(self.settings.path)
        self.wake = asyncio.Event()
        self.closed = False

    def offer(self, request_id: str, version: str, records: list[dict[str, Any]], predictions: list[float]) -> None:
        """Keep a sampled request's records for the next write (no I/O)."""
        if self.settings.sample_rate < 1.0 and random.random() >= self.settings.sample_rate:
            return
        now = datetime.now(UTC)
        for index, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
            self.pending.append({**record, "request_id": request_id, "record_index": index, "timestamp": now,
                                 "model_version": version, "prediction": prediction})
        self.counts.offered += len(records)
        self._trim()
        if len(self.pending) >= self.settings.flush_records:
            self.wake.set()

    async def run(self) -> None:
        """Write what is pending every flush_interval_s (sooner when flush_records are waiting), until closed."""
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.flush_interval_s)
            self.wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        try:
            await asyncio.to_thread(self._write, rows)
            self.counts.written += len(rows)
        except Exception as error:  # noqa: BLE001 - storage is down: keep the rows, try again next time
            self.counts.failed_writes += 1
            if self.counts.failed_writes in (1, 10, 100) or self.counts.failed_writes % 1000 == 0:
                log.warning("prediction log write to %s failed (%d times): %s", self.settings.path,
                            self.counts.failed_writes, error)
            self.pending = rows + self.pending
            self._trim()

    def _trim(self) -> None:
        """Past max_pending_records the oldest rows go, counted as dropped."""
        overflow = len(self.pending) - self.settings.max_pending_records
        if overflow > 0:
            del self.pending[:overflow]
            self.counts.dropped += overflow

    def _write(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        day = rows[0]["timestamp"].strftime("%Y-%m-%d")
        folder = f"{self.root.rstrip('/')}/date={day}"
        self.filesystem.create_dir(folder, recursive=True)
        self.sequence += 1
        name = f"{self.writer_id}-{int(time.time())}-{self.sequence:06d}.parquet"
        staging = f"{folder}/.{name}.tmp"
        pq.write_table(table, staging, filesystem=self.filesystem)
        self.filesystem.move(staging, f"{folder}/{name}")  # readers never see a half-written file
