"""A deterministic synthetic flights source: the joined flights + weather schema at any size, without disk.

Every value is a pure function of (seed, row id, column), computed with a counter-based hash, so a row is the same
however the rows are cut into blocks, blocks are generated in parallel, and nothing is stored. The generator keeps
the quirks of the real data that pipelines trip over: nulls (cancelled flights have no arrival), skewed categories
with a long tail of rare values, heavy-tailed delays, seasonal weather, high-cardinality tail numbers. A chosen
fraction of rows carries exactly one injected defect, one kind per validation rule, so quarantine can be checked.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import ray.data

from mlscale.config import SyntheticConfig

# One read task per block. Each task costs ~0.1 s of dispatch (Ray Data's executor polls finished tasks every 100 ms,
# then leases a worker) on top of its work, so 64k-row blocks (~0.4 s of work each) left 28% of the cores idle;
# 256k rows (~56 MB of Arrow made by one task; Ray Data still cuts its output into `ray.target_max_block_size`
# blocks, so what flows downstream stays small) keeps the gap to a few percent.
ROWS_PER_BLOCK = 262_144
CARRIERS = ["UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX", "FL", "AS", "F9", "YV", "HA", "OO"]
ORIGINS = ["EWR", "JFK", "LGA"]
DEFECTS = ("null_carrier", "dep_delay_range", "origin_not_allowed", "carrier_pattern", "implausible_speed",
           "duplicate_key", "time_parts")

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash with good avalanche."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _Draws:
    """Uniform numbers in [0, 1) keyed by (seed, row id, stream): stream k of row i is always the same number."""

    def __init__(self, ids: np.ndarray, seed: int) -> None:
        with np.errstate(over="ignore"):
            self._base = _mix(ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed))

    def uniform(self, stream: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            bits = _mix(self._base + np.uint64(stream) * np.uint64(0xD1B54A32D192ED03))
        return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    def normal(self, stream: int) -> np.ndarray:
        u1 = np.maximum(self.uniform(stream), 1e-12)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * self.uniform(stream + 1000))

    def choice(self, stream: int, weights: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(weights) / np.sum(weights)
        return np.minimum(np.searchsorted(cumulative, self.uniform(stream), side="right"), len(weights) - 1)


def _zipf(n: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1) ** exponent


DESTS = [chr(65 + i // 26 % 26) + chr(65 + i % 26) + chr(65 + (i * 7) % 26) for i in range(105)]
DEST_MILES = np.array([200.0 + (i * 137) % 2300 for i in range(105)])


def _hhmm(minutes: np.ndarray) -> np.ndarray:
    minutes = np.mod(np.round(minutes), 1440).astype(np.int64)
    return minutes // 60 * 100 + minutes % 60


def _key_columns(draws: _Draws) -> dict[str, np.ndarray]:
    """The columns that identify a flight; a duplicate-key defect takes them from the previous row."""
    month = 1 + np.floor(draws.uniform(0) * 12).astype(np.int64)
    day = 1 + np.floor(draws.uniform(1) * 28).astype(np.int64)
    carrier = draws.choice(2, np.append(_zipf(len(CARRIERS), 1.1), 0.0005))  # last: a very rare carrier
    flight = 1 + np.floor(draws.uniform(3) * 6000).astype(np.int64)
    origin = draws.choice(4, np.array([0.36, 0.33, 0.31]))
    hour = 5 + np.floor(draws.uniform(5) ** 0.9 * 19).astype(np.int64)
    minute = np.floor(draws.uniform(6) * 12).astype(np.int64) * 5
    return {"month": month, "day": day, "carrier": carrier, "flight": flight, "origin": origin,
            "hour": hour, "minute": minute}


def generate_table(ids: np.ndarray, seed: int = 0, bad_fraction: float = 0.0) -> pa.Table:
    """The rows with these ids: the same values whatever batch they are generated in."""
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size
    draws = _Draws(ids, seed)
    defect_draw = draws.uniform(90)
    is_bad = defect_draw < bad_fraction
    defect = np.where(is_bad, np.floor(defect_draw / max(bad_fraction, 1e-300) * len(DEFECTS)), -1).astype(np.int64)
    defect = np.minimum(defect, len(DEFECTS) - 1)
    duplicate = (defect == DEFECTS.index("duplicate_key")) & (ids > 0)
    keys = _key_columns(draws)
    if duplicate.any():
        previous = _key_columns(_Draws(ids[duplicate] - 1, seed))
        for name, values in previous.items():
            keys[name][duplicate] = values
    month, hour, minute = keys["month"], keys["hour"], keys["minute"]
    carrier_names = np.array(CARRIERS + ["ZZ"], dtype=object)[keys["carrier"]]
    dest_index = draws.choice(7, _zipf(len(DESTS), 1.0))
    distance = DEST_MILES[dest_index] + np.floor(draws.uniform(8) * 3)
    sched_dep = hour * 60 + minute
    air_time = np.round(distance / 7.2 + 20 + draws.normal(9) * 6)
    season = np.cos(2 * np.pi * (month - 7) / 12.0)
    temp = np.round(55 + 22 * season + draws.normal(11) * 8, 1)
    precip = np.where(draws.uniform(13) < 0.07, np.round(-np.log(np.maximum(draws.uniform(14), 1e-9)) * 0.08, 2), 0.0)
    wind_speed = np.round(np.minimum(-np.log(np.maximum(draws.uniform(15), 1e-9)) * 10, 60), 1)
    late_prone = 0.3 + 0.4 * (hour >= 16) + 0.3 * (precip > 0) + 0.2 * (keys["carrier"] >= 2)
    delayed = draws.uniform(16) < 0.35 * late_prone
    exponential = -np.log(np.maximum(draws.uniform(17), 1e-9))
    dep_delay = np.round(np.where(delayed, exponential * 45, -5 + draws.normal(18) * 4))
    cancelled = draws.uniform(19) < 0.02 + 0.03 * (precip > 0.3)
    diverted = ~cancelled & (draws.uniform(20) < 0.003)
    arr_delay = np.round(dep_delay - 6 + draws.normal(21) * 12 + 2 * wind_speed / 10)
    dep_time = _hhmm(sched_dep + dep_delay)
    sched_arr = _hhmm(sched_dep + air_time + 25)
    arr_time = _hhmm(sched_dep + dep_delay + air_time + 25)
    tail = np.floor(draws.uniform(22) ** 1.5 * 4000).astype(np.int64)
    tailnum = np.char.add(np.char.add("N", np.char.zfill(tail.astype(str), 4)), "X")

    columns: dict[str, pa.Array] = {
        "year": pa.array(np.full(n, 2013, np.int64)),
        "month": pa.array(month),
        "day": pa.array(keys["day"]),
        "dep_time": pa.array(dep_time, mask=cancelled),
        "sched_dep_time": pa.array(hour * 100 + minute),
        "dep_delay": pa.array(dep_delay, mask=cancelled),
        "arr_time": pa.array(arr_time, mask=cancelled | diverted),
        "sched_arr_time": pa.array(sched_arr),
        "arr_delay": pa.array(arr_delay, mask=cancelled | diverted),
        "carrier": pa.array(carrier_names, type=pa.string()),
        "flight": pa.array(keys["flight"]),
        "tailnum": pa.array(tailnum.astype(object), type=pa.string(), mask=draws.uniform(23) < 0.01),
        "origin": pa.array(np.array(ORIGINS, dtype=object)[keys["origin"]], type=pa.string()),
        "dest": pa.array(np.array(DESTS, dtype=object)[dest_index], type=pa.string()),
        "air_time": pa.array(air_time, mask=cancelled | diverted),
        "distance": pa.array(distance),
        "hour": pa.array(hour),
        "minute": pa.array(minute),
        "temp": pa.array(temp, mask=draws.uniform(24) < 0.001),
        "dewp": pa.array(np.round(temp - np.abs(10 + draws.normal(25) * 5), 1)),
        "humid": pa.array(np.round(30 + 70 * draws.uniform(27), 2)),
        "wind_dir": pa.array(np.floor(draws.uniform(28) * 36) * 10, mask=draws.uniform(29) < 0.02),
        "wind_speed": pa.array(wind_speed),
        "wind_gust": pa.array(np.round(wind_speed * 1.15, 1), mask=draws.uniform(30) < 0.75),
        "precip": pa.array(precip),
        "pressure": pa.array(np.round(1017 + draws.normal(31) * 7, 1), mask=draws.uniform(33) < 0.1),
        "visib": pa.array(np.where(draws.uniform(34) < 0.9, 10.0, np.round(draws.uniform(35) * 10, 2))),
    }
    if is_bad.any():
        columns = _inject(columns, defect)
    return pa.table(columns)


def _inject(columns: dict[str, pa.Array], defect: np.ndarray) -> dict[str, pa.Array]:
    """Give each bad row its one defect (the duplicate key was already taken from the previous row)."""

    def replace(name: str, mask: np.ndarray, value: object) -> None:
        if mask.any():
            current = columns[name].to_numpy(zero_copy_only=False)
            current = current.astype(object) if current.dtype.kind in "OU" else current.copy()
            nulls = columns[name].is_null().to_numpy(zero_copy_only=False) & ~mask
            current[mask] = value if value is not None else current[mask]
            columns[name] = pa.array(current, type=columns[name].type, mask=nulls | (mask & (value is None)))

    kind = {name: defect == index for index, name in enumerate(DEFECTS)}
    replace("carrier", kind["null_carrier"], None)
    replace("dep_delay", kind["dep_delay_range"], 5000.0)
    replace("origin", kind["origin_not_allowed"], "XXX")
    replace("carrier", kind["carrier_pattern"], "??")
    replace("air_time", kind["implausible_speed"], 1.0)
    replace("distance", kind["implausible_speed"], 2000.0)
    replace("minute", kind["time_parts"], 7)  # hour*100 + minute no longer equals sched_dep_time
    return columns


def _generate_batch(batch: dict[str, np.ndarray], seed: int, bad_fraction: float) -> pa.Table:
    return generate_table(batch["id"], seed, bad_fraction)


def read_synthetic(config: SyntheticConfig) -> ray.data.Dataset:
    """config.rows synthetic flights, generated lazily block by block across the cluster."""
    blocks = config.blocks or max(1, -(-config.rows // ROWS_PER_BLOCK))
    return ray.data.range(config.rows, override_num_blocks=blocks).map_batches(
        partial(_generate_batch, seed=config.seed, bad_fraction=config.bad_fraction),
        batch_format="numpy",
        batch_size=None,
    )


def synthetic_fingerprint(config: SyntheticConfig) -> str:
    return f"synthetic-{config.rows}-{config.seed}-{config.bad_fraction:g}"
