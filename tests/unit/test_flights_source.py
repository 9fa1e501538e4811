import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlscale.data.flights import (
    FLIGHTS_SCHEMA,
    JOIN_KEYS,
    WEATHER_COLUMNS,
    extract_flights,
    join_weather,
    package_data_dir,
    read_weather,
    sample_mask,
)


def test_shipped_files_are_found_by_path():
    names = {p.name for p in package_data_dir().iterdir()}
    assert {"flights.csv.zip", "weather.csv"} <= names


def test_weather_has_one_row_per_key():
    weather = read_weather()
    keys = weather.group_by(JOIN_KEYS).aggregate([([], "count_all")])
    assert keys.num_rows == weather.num_rows > 26_000
    assert set(WEATHER_COLUMNS) <= set(weather.column_names)


def test_extract_splits_all_rows_once(tmp_path):
    files = extract_flights(tmp_path, 4)
    assert len(files) == 4
    rows = sum(len(f.read_text().splitlines()) - 1 for f in files)
    assert rows == 336_776
    assert extract_flights(tmp_path, 4) == files  # cached: the second call does no work


def test_join_keeps_every_flight_and_fills_weather():
    weather = read_weather()
    flights = pa.table({
        "origin": ["EWR", "JFK", "LGA"], "year": [2013, 2013, 2013], "month": [1, 6, 12],
        "day": [1, 15, 31], "hour": [5, 12, 3], "flight": [1, 2, 3], "sched_dep_time": [515, 1200, 300],
    })
    joined = join_weather(flights, weather, 1.0)
    assert joined.num_rows == 3
    assert joined.column("temp").null_count < 3
    missing = pa.table({"origin": ["EWR"], "year": [1999], "month": [1], "day": [1], "hour": [0],
                        "flight": [1], "sched_dep_time": [0]})
    assert join_weather(missing, weather, 1.0).column("temp").null_count == 1


def test_sample_is_deterministic_and_close_to_fraction():
    rng = np.random.default_rng(0)
    n = 50_000
    table = pa.table({"month": rng.integers(1, 13, n), "day": rng.integers(1, 29, n),
                      "sched_dep_time": rng.integers(0, 2359, n), "flight": rng.integers(1, 5000, n)})
    mask = sample_mask(table, 0.1)
    assert 0.09 < mask.mean() < 0.11
    np.testing.assert_array_equal(mask, sample_mask(table, 0.1))
    np.testing.assert_array_equal(mask[:1000], sample_mask(table.slice(0, 1000), 0.1))  # row-local


def test_schema_covers_flight_and_weather_columns():
    names = {spec.name for spec in FLIGHTS_SCHEMA}
    assert set(WEATHER_COLUMNS) <= names
    assert {"arr_delay", "dep_delay", "carrier", "origin", "dest"} <= names
    assert not pc.any(pc.equal(pa.array([s.name for s in FLIGHTS_SCHEMA]), "time_hour")).as_py()


def test_synthetic_rows_do_not_depend_on_how_they_are_batched():
    import numpy as np

    from mlscale.data.synthetic import generate_table

    whole = generate_table(np.arange(3_000), seed=3, bad_fraction=0.05)
    parts = [generate_table(np.arange(a, b), seed=3, bad_fraction=0.05) for a, b in ((0, 1_234), (1_234, 3_000))]
    import pyarrow as pa

    assert pa.concat_tables(parts).equals(whole)
    assert not generate_table(np.arange(3_000), seed=4).equals(whole)
    assert whole.column("arr_delay").null_count > 0 and whole.column("wind_gust").null_count > 1_000
    carriers = whole.column("carrier").value_counts().to_pylist()
    counts = sorted(item["counts"] for item in carriers)
    assert counts[-1] > 10 * counts[len(counts) // 2 - 1]  # skewed, with a long tail of rare values
