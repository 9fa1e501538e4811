"""The train/serve skew guard: random records through the batch path (an Arrow batch, as map_batches sees it) and
the online path (one JSON record at a time, as a Serve request sees it) must give bit-identical features."""

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.data.flights import FLIGHTS_SCHEMA
from mlscale.features.featureset import transform_batch
from mlscale.schema import arrow_schema
from tests.unit.test_featureset import RICH, fitted, sample_table

SCHEMA = [spec for spec in FLIGHTS_SCHEMA if spec.name in RICH.raw_columns or spec.name == "tailnum"]
FEATURES = fitted(sample_table(500), RICH)
KNOWN = {"carrier": ["UA", "AA", "DL", "ZZ"], "origin": ["EWR", "JFK", "LGA"], "tailnum": ["N001", "N036"]}


def value_strategy(spec):
    if spec.dtype == "str":
        known = KNOWN.get(spec.name, [])
        base = st.sampled_from(known) | st.text(max_size=12) if known else st.text(max_size=12)
    elif spec.dtype == "int":
        low = int(spec.min) if spec.min is not None else -10_000
        high = int(spec.max) if spec.max is not None else 10_000
        base = st.integers(low, high)
    else:
        base = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.floats(-100, 100)
    return st.none() | base


RECORD = st.fixed_dictionaries({spec.name: value_strategy(spec) for spec in SCHEMA})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, min_size=1, max_size=40))
def test_batch_and_online_paths_give_identical_features(records):
    batch = pa.Table.from_pylist(records, schema=arrow_schema(SCHEMA))
    batched = transform_batch(batch, FEATURES, label=None, threshold=0.0)
    for index, record in enumerate(records):
        online = FEATURES.transform({name: [record.get(name)] for name in FEATURES.input_columns})
        for key in ("x_num", "x_cat"):
            np.testing.assert_array_equal(batched[key][index], online[key][0], err_msg=f"{key} of {record}")
