"""The prediction log: what the service was asked and what it answered, for monitoring and for joining labels later.

A sampled share of requests is kept in memory (the validated records, the predictions, the version, the request id
Serve gives every request, the time) and written to parquet in batches by a background task, off the request path:
`<path>/date=YYYY-MM-DD/<replica>-<sequence>.parquet`, on local disk or object storage (any pyarrow filesystem URI).
A failed write (storage down) keeps the rows for the next attempt, up to a bound in rows and in bytes (long text
fields make rows of any size); past it the oldest are dropped and counted. Nothing here can fail or wait a request:
`offer` only appends to a list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlscale.schema import ColumnSpec, arrow_schema

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
    max_pending_bytes: int = 128 * 2**20
    shutdown_flush_s: float = 10.0


ROW_OVERHEAD = 120  # bytes a pending row costs beside its values: the dict and the fields every row carries


def row_bytes(record: dict[str, Any]) -> int:
    """A pending row's size as the bound counts it: its text by length, every other value as 8 bytes."""
    return ROW_OVERHEAD + sum(len(value) if isinstance(value, str) else 8 for value in record.values())


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
    sizes: list[int] = field(default_factory=list)  # row_bytes of each pending row, in the same order
    pending_bytes: int = 0
    counts: LogCounts = field(default_factory=LogCounts)
    sequence: int = 0

    def __post_init__(self) -> None:
        self.schema = pa.schema([*META_FIELDS, *arrow_schema(self.input_schema)])
        # resolved at the first write, in the writer's thread: an S3 URI without a region asks the store for its
        # region, and a replica must start (and answer) with its storage unreachable
        self.store: tuple[pafs.FileSystem, str] | None = None
        self.wake = asyncio.Event()
        self.closed = False
        self.in_flight = 0  # rows of the write under way

    def offer(self, request_id: str, version: str, records: list[dict[str, Any]], predictions: list[float]) -> None:
        """Keep a sampled request's records for the next write (no I/O)."""
        if self.settings.sample_rate < 1.0 and random.random() >= self.settings.sample_rate:
            return
        now = datetime.now(UTC)
        for index, (record, prediction) in enumerate(zip(records, predictions, strict=True)):
            self.pending.append({**record, "request_id": request_id, "record_index": index, "timestamp": now,
                                 "model_version": version, "prediction": prediction})
            size = row_bytes(record)
            self.sizes.append(size)
            self.pending_bytes += size
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
        rows, sizes, self.pending, self.sizes = self.pending, self.sizes, [], []
        self.pending_bytes -= sum(sizes)
        self.in_flight = len(rows)
        try:
            await asyncio.to_thread(self._write, rows)
            self.counts.written += len(rows)
        except Exception as error:  # noqa: BLE001 - storage is down: keep the rows, try again next time
            self.counts.failed_writes += 1
            if self.counts.failed_writes in (1, 10, 100) or self.counts.failed_writes % 1000 == 0:
                log.warning("prediction log write to %s failed (%d times): %s", self.settings.path,
                            self.counts.failed_writes, error)
            self.pending, self.sizes = rows + self.pending, sizes + self.sizes
            self.pending_bytes += sum(sizes)
            self._trim()
        finally:
            self.in_flight = 0

    def _trim(self) -> None:
        """Past max_pending_records or max_pending_bytes the oldest rows go, counted as dropped."""
        overflow = max(len(self.pending) - self.settings.max_pending_records, 0)
        dropped_bytes = sum(self.sizes[:overflow])
        while self.pending_bytes - dropped_bytes > self.settings.max_pending_bytes and overflow < len(self.pending):
            dropped_bytes += self.sizes[overflow]
            overflow += 1
        if overflow > 0:
            self.pending_bytes -= dropped_bytes
            del self.pending[:overflow]
            del self.sizes[:overflow]
            self.counts.dropped += overflow

    def close(self) -> None:
        """Stop the writer and write what is pending, giving up after settings.shutdown_flush_s (what is not
        known to be written then is counted as dropped). Blocking, in a thread of its own: it runs from a replica's
        destructor, where no event loop can be awaited."""
        self.closed = True
        self.wake.set()
        rows, self.pending, self.sizes, self.pending_bytes = self.pending, [], [], 0
        waiting, written = len(rows) + self.in_flight, self.counts.written
        if rows:
            def write() -> None:
                try:
                    self._write(rows)
                    self.counts.written += len(rows)
                except Exception as error:  # noqa: BLE001 - storage down at shutdown: counted as dropped
                    log.warning("prediction log: %d rows not written at shutdown: %s", len(rows), error)

            writer = threading.Thread(target=write, name="prediction-log-close", daemon=True)
            writer.start()
            writer.join(self.settings.shutdown_flush_s)
            if writer.is_alive():
                log.warning("prediction log: rows not written within %g s of shutdown", self.settings.shutdown_flush_s)
        self.counts.dropped += max(waiting - (self.counts.written - written), 0)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        day = rows[0]["timestamp"].strftime("%Y-%m-%d")
        if self.store is None:
            self.store = pafs.FileSystem.from_uri(self.settings.path)
        filesystem, root = self.store
        folder = f"{root.rstrip('/')}/date={day}"
        filesystem.create_dir(folder, recursive=True)
        self.sequence += 1
        name = f"{self.writer_id}-{int(time.time())}-{self.sequence:06d}.parquet"
        staging = f"{folder}/.{name}.tmp"
        pq.write_table(table, staging, filesystem=filesystem)
        filesystem.move(staging, f"{folder}/{name}")  # readers never see a half-written file
