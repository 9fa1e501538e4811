"""Split assignment: by time values or ranges (numbers, ISO dates, timestamps), by key hash, by seeded draw; the
same row always lands in the same split, however the data is cut into blocks."""

from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from mlscale.config import SplitConfig
from mlscale.data.split import assign_splits, uniform
from mlscale.errors import ConfigError
from tests.reference_hash import FNV_PRIME, MASK, finish, fnv1a_splitmix

HASH = {"method": "hash", "keys": ["user"], "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}


def split(table, **settings):
    return list(assign_splits(table, SplitConfig(**settings), "month", table.column_names))


def test_time_values_as_before():
    table = pa.table({"month": [1, 9, 10, 12, None, 13]})
    assert split(table) == ["train", "train", "val", "test", "unused", "unused"]


def test_time_ranges_on_numbers_iso_strings_and_timestamps():
    numbers = pa.table({"t": [0.5, 1.0, 1.9, 2.0, 3.5]})
    ranges = {"column": "t", "train": {"end": 1.0}, "val": {"start": 1.0, "end": 2.0}, "test": {"start": 2.0}}
    assert split(numbers, **ranges) == ["train", "val", "val", "test", "test"]
    days = ["2013-09-30", "2013-10-01", "2013-11-30 23:59:00", "2013-12-01", None]
    dated = {"column": "day", "train": {"end": "2013-10-01"}, "val": {"start": "2013-10-01", "end": "2013-12-01"},
             "test": {"start": "2013-12-01"}}
    assert split(pa.table({"day": days}), **dated) == ["train", "val", "val", "test", "unused"]
    stamps = pa.array([datetime(2013, 9, 30), datetime(2013, 10, 1), datetime(2013, 12, 24)], pa.timestamp("us"))
    assert split(pa.table({"day": stamps}), **dated) == ["train", "val", "test"]
    date32 = pa.array([datetime(2013, 9, 30).date(), datetime(2013, 12, 1).date()], pa.date32())
    assert split(pa.table({"day": date32}), **dated) == ["train", "test"]


def test_a_date_bound_on_a_numeric_column_is_a_config_error():
    with pytest.raises(ConfigError, match="split.train: bound '2013-10-01'"):
        split(pa.table({"t": [1, 2]}), column="t", train={"end": "2013-10-01"}, val=[5], test=[6])


def test_hash_keeps_one_key_in_one_split_and_honours_fractions():
    users = [f"user-{i % 2000}" for i in range(20_000)]
    assigned = split(pa.table({"user": users, "x": list(range(20_000))}), **HASH)
    by_user: dict[str, set[str]] = {}
    for user, name in zip(users, assigned, strict=True):
        by_user.setdefault(user, set()).add(name)
    assert all(len(names) == 1 for names in by_user.values())
    shares = {name: assigned.count(name) / len(assigned) for name in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.03)


def reference_draw(key: str, seed: int) -> float:
    combined = finish(((fnv1a_splitmix(key) * FNV_PRIME) & MASK) ^ fnv1a_splitmix(str(seed)))
    return (combined >> 11) / 2**53


def test_hash_draws_match_the_documented_hash_and_the_seed_changes_them():
    """The draw is part of the data contract: a change of hash would move rows between splits on rerun."""
    table = pa.table({"user": ["a", "b", "c"]})
    expected = [reference_draw(user, 0) for user in ("a", "b", "c")]
    np.testing.assert_array_equal(uniform(table, ["user"], 0), expected)
    np.testing.assert_allclose(expected, [0.830973327686975, 0.038310312216201514, 0.5200987037954643], rtol=0)
    assert not np.allclose(uniform(table, ["user"], 1), uniform(table, ["user"], 0))


def test_random_split_does_not_depend_on_how_the_rows_are_cut():
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(size=5000), "b": rng.integers(0, 9, size=5000).astype(str)})
    settings = {"method": "random", "seed": 3, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}
    whole = split(table, **settings)
    pieces = split(table.slice(0, 1234), **settings) + split(table.slice(1234), **settings)
    assert whole == pieces
    assert abs(whole.count("train") / 5000 - 0.5) < 0.03


def test_fractions_below_one_leave_rows_unused():
    assigned = split(pa.table({"user": [str(i) for i in range(4000)]}),
                     **{**HASH, "fractions": {"train": 0.3, "val": 0.1, "test": 0.1}})
    assert abs(assigned.count("unused") / 4000 - 0.5) < 0.04


@pytest.mark.parametrize(("settings", "message"), [
    ({"method": "hash", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}, "split.keys is required"),
    ({**HASH, "fractions": {"train": 0.8, "val": 0.3, "test": 0.1}}, "add up to 1.2"),
    ({**HASH, "fractions": {"train": 0.8, "val": 0.2}}, "missing ['test']"),
    ({**HASH, "train": [1]}, "split.train is for method time"),
    ({"train": {"start": 5, "end": 1}}, "start 5 is not before end 1"),
    ({"train": {"end": 10}, "val": {"start": 9, "end": 11}, "test": [12]}, "split.train and split.val overlap"),
    ({"train": {"end": "2013-10-01"}, "val": {"start": 3}, "test": [12]}, "mix numbers and dates"),
])
def test_bad_split_settings_name_the_field(settings, message):
    from mlscale.config import config_from_dict

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        config_from_dict({"split": settings})
