import pickle

import numpy as np
import pytest
import torch

from mlscale.data.flights import FLIGHTS_SCHEMA
from mlscale.models.networks import build_network, network_spec
from mlscale.registry.bundle import WEIGHTS_FILE, Bundle
from tests.unit.test_featureset import fitted, sample_table


def make_bundle():
    features = fitted()
    spec = network_spec("mlp", len(features.numeric_names), features.cardinalities, hidden=[8], dropout=0.0)
    torch.manual_seed(0)
    network = build_network(spec)
    columns = set(features.input_columns)
    schema = [s for s in FLIGHTS_SCHEMA if s.name in columns]
    return Bundle(network_spec=spec, features=features, input_schema=schema, state_dict=network.state_dict(),
                  lineage={"config_hash": "abc"})


def test_save_load_predicts_identically(tmp_path):
    bundle = make_bundle()
    restored = Bundle.load(bundle.save(tmp_path / "b"))
    table = sample_table(40, seed=5)
    np.testing.assert_array_equal(bundle.predict_columns(table), restored.predict_columns(table))
    assert restored.lineage == {"config_hash": "abc"}
    assert [s.name for s in restored.input_schema] == [s.name for s in bundle.input_schema]


def test_records_and_columns_agree():
    bundle = make_bundle()
    table = sample_table(40, seed=6)
    records = table.to_pylist()
    np.testing.assert_allclose(bundle.predict_records(records), bundle.predict_columns(table), rtol=0, atol=1e-6)
    probabilities = bundle.predict_records(records)
    assert np.all((probabilities > 0) & (probabilities < 1))


class Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_weights_never_unpickle_code(tmp_path, capsys):
    directory = make_bundle().save(tmp_path / "b")
    torch.save({"weight": Exploit()}, directory / WEIGHTS_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL print"):
        Bundle.load(directory)
    assert "pickled code ran" not in capsys.readouterr().out


def test_unknown_network_family():
    with pytest.raises(ValueError, match="family 'gbdt' is unknown"):
        build_network({"family": "gbdt"})
