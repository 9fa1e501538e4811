"""The prediction log without Ray: batched parquet writes, an outage that loses nothing up to its bound, sampling."""

import asyncio

import pyarrow.parquet as pq
import pytest

from mlscale.schema import ColumnSpec
from mlscale.serve.predlog import LogSettings, PredictionLog

SCHEMA = [ColumnSpec(name="distance", dtype="float"), ColumnSpec(name="carrier", dtype="str")]
RECORDS = [{"distance": 719.0, "carrier": "UA"}, {"distance": None, "carrier": "B6"}]


def logged(folder) -> list[dict]:
    files = sorted(folder.rglob("*.parquet"))
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def test_requests_are_written_in_batches_with_their_ids_versions_and_predictions(tmp_path):
    log = PredictionLog(LogSettings(str(tmp_path / "log")), SCHEMA)
    log.offer("req-1", "3", RECORDS, [0.25, 0.75])
    log.offer("req-2", "3", RECORDS[:1], [0.5])
    assert not list(tmp_path.rglob("*.parquet"))  # offering does no I/O
    asyncio.run(log.flush())
    rows = logged(tmp_path / "log")
    assert [(row["request_id"], row["record_index"], row["prediction"]) for row in rows] == [
        ("req-1", 0, 0.25), ("req-1", 1, 0.75), ("req-2", 0, 0.5)]
    assert rows[1]["distance"] is None and rows[1]["carrier"] == "B6" and rows[0]["model_version"] == "3"
    assert len(list((tmp_path / "log").glob("date=*/*.parquet"))) == 1
    assert log.counts.written == 3 and not log.pending


def test_an_outage_keeps_the_rows_until_storage_is_back_and_drops_only_past_the_bound(tmp_path):
    blocker = tmp_path / "down"
    blocker.write_text("a file where the log's folder should be: every write fails")
    log = PredictionLog(LogSettings(str(blocker / "log"), max_pending_records=5), SCHEMA)
    for request in range(3):
        log.offer(f"req-{request}", "1", RECORDS, [0.1, 0.2])
        asyncio.run(log.flush())
    assert log.counts.failed_writes == 3 and log.counts.written == 0
    assert len(log.pending) == 5 and log.counts.dropped == 1  # 6 offered, the oldest one dropped
    blocker.unlink()
    asyncio.run(log.flush())
    assert log.counts.written == 5 and not log.pending
    assert [row["request_id"] for row in logged(blocker / "log")] == ["req-0", "req-1", "req-1", "req-2", "req-2"]


def test_sampling_keeps_about_the_configured_share_of_requests(tmp_path):
    log = PredictionLog(LogSettings(str(tmp_path / "log"), sample_rate=0.25), SCHEMA)
    for request in range(2000):
        log.offer(str(request), "1", RECORDS[:1], [0.5])
    assert log.counts.offered == len(log.pending) == pytest.approx(500, abs=80)


def test_the_writer_flushes_on_its_interval_and_stops_when_closed(tmp_path):
    async def scenario() -> None:
        log = PredictionLog(LogSettings(str(tmp_path / "log"), flush_interval_s=0.05), SCHEMA)
        writer = asyncio.create_task(log.run())
        log.offer("a", "1", RECORDS, [0.1, 0.9])
        await asyncio.sleep(0.3)
        assert log.counts.written == 2
        log.offer("b", "1", RECORDS[:1], [0.3])
        log.closed = True
        log.wake.set()
        await asyncio.wait_for(writer, 5)  # a closed log writes what it holds, then its task ends
        assert log.counts.written == 3

    asyncio.run(scenario())


def test_pending_rows_are_bounded_by_bytes_while_storage_is_down(tmp_path):
    from mlscale.serve.predlog import row_bytes

    blocker = tmp_path / "down"
    blocker.write_text("every write fails")
    log = PredictionLog(LogSettings(str(blocker / "log"), max_pending_records=1_000_000,
                                    max_pending_bytes=100_000), SCHEMA)
    long = [{"distance": 1.0, "carrier": "z" * 20_000}]
    for request in range(20):
        log.offer(f"req-{request}", "1", long, [0.5])
        asyncio.run(log.flush())
    assert log.pending_bytes <= 100_000 and log.sizes == [row_bytes(long[0])] * len(log.pending)
    assert log.pending_bytes == sum(log.sizes)
    assert len(log.pending) == 4 and log.counts.dropped == 16
    assert [row["request_id"] for row in log.pending] == ["req-16", "req-17", "req-18", "req-19"]


def test_a_log_on_unreachable_object_storage_starts_without_touching_it(monkeypatch, tmp_path):
    """An s3:// log without a region would ask the store for one: nothing may reach storage before the first
    write, so a replica starts (and answers) while the store is down; the write then fails and keeps its rows."""
    from types import SimpleNamespace

    import mlscale.serve.predlog as predlog

    calls = []

    def unreachable(uri):
        calls.append(uri)
        raise OSError("When resolving region for bucket 'lake': connection refused")

    monkeypatch.setattr(predlog, "pafs", SimpleNamespace(FileSystem=SimpleNamespace(from_uri=unreachable)))
    log = PredictionLog(LogSettings("s3://lake/predictions"), SCHEMA)
    log.offer("req-1", "1", RECORDS, [0.1, 0.2])
    assert calls == []
    asyncio.run(log.flush())
    assert calls and log.counts.failed_writes == 1 and len(log.pending) == 2


def test_closing_writes_what_is_pending_within_its_bound(tmp_path):
    log = PredictionLog(LogSettings(str(tmp_path / "log"), flush_records=10_000, flush_interval_s=3600), SCHEMA)
    log.offer("req-1", "1", RECORDS, [0.1, 0.2])
    log.close()
    assert log.closed and log.counts.written == 2 and [row["request_id"] for row in logged(tmp_path / "log")] == [
        "req-1", "req-1"]

    class Slow(PredictionLog):
        def _write(self, rows):
            import time

            time.sleep(1.0)

    slow = Slow(LogSettings(str(tmp_path / "slow"), shutdown_flush_s=0.05), SCHEMA)
    slow.offer("req-2", "1", RECORDS, [0.1, 0.2])
    slow.close()
    assert slow.counts.written == 0 and slow.counts.dropped == 2  # given up at the bound, and counted
