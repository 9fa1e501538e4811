import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlscale.config import config_from_dict, load_config, parse_overrides
from mlscale.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_a_complete_pipeline():
    config = load_config()
    assert config.train.num_workers == 2
    assert set(config.split.train).isdisjoint(config.split.test)
    assert config.tracking_uri.startswith("sqlite:///")


@pytest.mark.parametrize(("name", "sample", "model"), [("flights.yaml", 1.0, "flights-late-arrival"),
                                                      ("flights-small.yaml", 0.1, "flights-small-late-arrival")])
def test_example_configs_load_as_written(name, sample, model, monkeypatch):
    for variable in ("MLSCALE_RAY_ADDRESS", "MLSCALE_STORAGE", "MLFLOW_TRACKING_URI", "MLSCALE_SERVE_PORT"):
        monkeypatch.delenv(variable, raising=False)
    config = load_config(REPO / "jobs" / "configs" / name)
    assert (config.data.sample_fraction, config.tracking.registered_model) == (sample, model)
    assert config.ray.address is None and config.tracking.uri is None and config.serve.port == 8000
    assert config.storage.root_path == (Path.cwd() / ".mlscale").resolve()
    assert [check.name for check in config.validation.checks] == ["plausible_speed", "time_parts"]


def test_bad_value_names_field_and_value(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "train.epochs" in str(error.value)
    assert "got 0" in str(error.value)


def test_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(path)


def test_overlapping_splits_are_rejected():
    with pytest.raises(ConfigError, match="both contain 9"):
        load_config(None, {"split.val": [9, 10]})


def test_env_expansion(tmp_path, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("storage:\n  root: ${MLSCALE_TEST_ROOT:-/default}\ntracking:\n  uri: ${MLSCALE_TEST_URI}\n")
    monkeypatch.setenv("MLSCALE_TEST_URI", "http://127.0.0.1:5000")
    config = load_config(path)
    assert config.storage.root == "/default"
    assert config.tracking_uri == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLSCALE_TEST_URI")
    with pytest.raises(ConfigError, match="MLSCALE_TEST_URI is not set"):
        load_config(path)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_overrides_parse_json_values():
    assert parse_overrides(["train.epochs=2", "train.model.hidden=[8, 4]", "name=x"]) == {
        "train.epochs": 2, "train.model.hidden": [8, 4], "name": "x",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_fingerprint_tracks_results_not_serving():
    base = load_config()
    assert base.fingerprint() == load_config(None, {"serve.port": 9999}).fingerprint()
    assert base.fingerprint() != load_config(None, {"train.optimizer.lr": 0.01}).fingerprint()


def test_feature_shorthand_and_detailed_forms_mix():
    from mlscale.config import FeaturesConfig

    features = FeaturesConfig(numeric=["temp", {"column": "dep_delay", "clip": [-60, 600], "buckets": 8}],
                              categorical=["carrier", {"column": "tailnum", "hash_buckets": 256}],
                              crosses=[{"columns": ["origin", "dest"]}])
    assert [f.column for f in features.numeric] == ["temp", "dep_delay"]
    assert features.numeric[1].buckets == 8 and features.categorical[1].hash_buckets == 256
    assert features.crosses[0].name == "origin_x_dest" and features.crosses[0].hash_buckets == 1024
    assert features.raw_columns[:4] == ["temp", "dep_delay", "carrier", "tailnum"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"features.numeric": [{"column": "x", "clip": [5, 1]}]}, "clip low 5.0 is above clip high 1.0 for 'x'"),
        ({"features.crosses": [{"columns": ["origin"]}]}, "features.crosses.0.columns"),
        ({"data.source": "parquet"}, "data.path is required when data.source is 'parquet'"),
        ({"data.source": "delta"}, "data.source"),
        ({"validation.max_quarantine_fraction": 1.5}, "validation.max_quarantine_fraction"),
        ({"validation.checks": [{"name": "bad name", "expr": "a < b"}]}, "validation.checks.0.name"),
        ({"validation.min_rows": 10, "validation.max_rows": 5}, "validation.max_rows (5) is below"),
    ],
)
def test_data_and_feature_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "has space", "x\n"])
def test_pipeline_name_is_a_plain_identifier(name):
    """Folders under storage.root are named after it: '' or '../x' would replace or escape them."""
    with pytest.raises(ConfigError, match="name"):
        load_config(None, {"name": name})


def test_name_override_from_the_cli_is_refused_before_anything_is_touched(tmp_path):
    from typer.testing import CliRunner

    from mlscale.cli import app

    prepared = tmp_path / "prepared" / "flights"
    prepared.mkdir(parents=True)
    (prepared / "keep.parquet").write_text("data")
    for name in ("", "../x"):
        result = CliRunner().invoke(app, ["prepare", "--set", f"name={name}", "--set", f"storage.root={tmp_path}"])
        assert result.exit_code == 2, result.output
        assert "name" in result.output
    assert (prepared / "keep.parquet").read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_env_is_expanded_in_values_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MLSCALE_UNSET_VAR", raising=False)
    monkeypatch.setenv("MLSCALE_TRICKY", "line one\nserve:\n  port: 1 # not a comment")
    path = tmp_path / "env.yaml"
    path.write_text("# ${MLSCALE_UNSET_VAR} in a comment is never read\n"
                    "tracking:\n  experiment: ${MLSCALE_TRICKY}  # a trailing comment\n")
    config = load_config(path)
    assert config.tracking.experiment == "line one\nserve:\n  port: 1 # not a comment"
    assert config.serve.port == 8000  # the variable's text did not become YAML


def test_a_reference_expanding_to_nothing_is_unset(tmp_path, monkeypatch):
    """`address: ${MLSCALE_RAY_ADDRESS:-}` means no address (start the embedded Ray), not the address ''."""
    monkeypatch.delenv("MLSCALE_RAY_ADDRESS", raising=False)
    path = tmp_path / "empty.yaml"
    path.write_text("ray:\n  address: ${MLSCALE_RAY_ADDRESS:-}\ntracking:\n  experiment: x${MLSCALE_RAY_ADDRESS:-}\n")
    config = load_config(path)
    assert config.ray.address is None
    assert config.tracking.experiment == "x"
    for name in ("flights.yaml", "flights-small.yaml"):
        assert load_config(REPO / "jobs" / "configs" / name).ray.address is None


def test_logged_params_hold_no_credentials():
    from mlscale.tracking import flat_params

    config = load_config(None, {
        "tracking.uri": "postgresql://ml:s3cret-pw@db.internal:5432/mlflow",
        "tune.study_storage": "postgresql://optuna:other-pw@db/optuna?password=qs-pw&sslmode=require",
        "data.object_store.endpoint_url": "http://minio:9000/?token=tok-123",
        "data.object_store.region": "private-region",
        "tracking.secrets": ["data.object_store.region"],
    })
    params = {**flat_params(config), **flat_params(config, "tune")}
    text = "\n".join(params.values())
    for secret in ("s3cret-pw", "other-pw", "qs-pw", "tok-123", "private-region"):
        assert secret not in text
    assert params["tracking.uri"] == "postgresql://ml:***@db.internal:5432/mlflow"
    assert params["tune.study_storage"] == "postgresql://optuna:***@db/optuna?password=***&sslmode=require"
    assert params["data.object_store.region"] == "***"
    assert params["data.object_store.access_key_env"] == "AWS_ACCESS_KEY_ID"  # the variable's name, not a secret
    assert params["train.model.d_token"] == "16"  # a width whose name contains "token"


def test_the_examples_ship_in_the_package_and_load_by_name(tmp_path, monkeypatch):
    """A plain `pip install` has no jobs/ folder: `--config flights-small` finds the packaged example."""
    import mlscale.config

    monkeypatch.chdir(tmp_path)  # no repository around
    for name in ("flights", "flights-small", "flights-small.yaml", "flights-replay"):
        by_name = load_config(name)
        assert by_name.fingerprint() == load_config(REPO / "jobs" / "configs" / f"{name.removesuffix('.yaml')}.yaml"
                                                    ).fingerprint()
    packaged = Path(mlscale.config.__file__).parent.parent / "configs"
    assert (REPO / "jobs" / "configs" / "flights.yaml").resolve() == packaged / "flights.yaml"  # one copy
    with pytest.raises(ConfigError, match="built-in example: flights, flights-replay, flights-small"):
        load_config("flight")


def test_serve_autoscaling_bounds_are_checked_with_a_readable_message():
    from mlscale.config import ServeConfig

    with pytest.raises(ValidationError, match=r"max_replicas \(1\) is below min_replicas \(3\)"):
        ServeConfig.model_validate({"autoscaling": {"min_replicas": 3, "max_replicas": 1}})
    with pytest.raises(ValidationError, match="overload_status"):
        ServeConfig.model_validate({"overload_status": 500})
    settings = ServeConfig.model_validate({"autoscaling": {"max_replicas": 6}})
    assert settings.autoscaling is not None and settings.autoscaling.min_replicas == 1


def test_deployment_options_follow_the_serve_section():
    from mlscale.config import ServeConfig
    from mlscale.serve.build import deployment_options

    fixed = deployment_options(ServeConfig(num_replicas=3, max_queued_requests=10, retry_after_s=4))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_queued_requests"] == 10
    assert fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 4}
    scaled = deployment_options(ServeConfig.model_validate({"autoscaling": {"max_replicas": 5}}))
    assert scaled["autoscaling_config"]["max_replicas"] == 5 and "num_replicas" not in scaled
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0}  # no custom resource unless asked for
    pinned = deployment_options(ServeConfig.model_validate({"model_cpus": 0.5, "replica_resources": {"serve": 1}}))
    assert pinned["ray_actor_options"] == {"num_cpus": 0.5, "resources": {"serve": 1.0}}


def test_credentials_leave_the_process_only_as_references_on_every_path(monkeypatch, tmp_path):
    """A password in the tracking URI and a declared secret field: the retrain job's command, the Serve
    user_config and the generated Serve config file carry ${VAR} references, the receiving side expands them back,
    and a credential no variable holds is refused naming the field."""
    import shlex

    import mlscale.serve.config_file as config_file
    from mlscale.config import load_config, parse_overrides
    from mlscale.errors import ConfigError
    from mlscale.monitor.jobs import retrain_entrypoint
    from mlscale.serve.build import rollout_config

    monkeypatch.setenv("MLSCALE_TEST_MLFLOW_PASSWORD", "s3cr3t-pw")
    monkeypatch.setenv("MLSCALE_TEST_JOBS", "http://jobs:t0ken-xyz@127.0.0.1:8265")
    uri = "http://alice:s3cr3t-pw@127.0.0.1:5000"
    config = load_config("flights-small", {"tracking.uri": uri, "tracking.secrets": ["monitor.retrain.jobs_address"],
                                           "monitor.retrain.jobs_address": "${MLSCALE_TEST_JOBS}",
                                           "storage.root": str(tmp_path)})
    command = retrain_entrypoint(config)
    user_config = rollout_config("models:/m@champion", "models:/m/1", config.tracking_uri, config.serve, "R")
    monkeypatch.setattr(config_file, "pinned_uri", lambda uri, tracking: "models:/m/1")
    document = config_file.serve_config_document(config)
    for leaving in (command, json.dumps(user_config), json.dumps(document)):
        assert "s3cr3t-pw" not in leaving and "t0ken-xyz" not in leaving
        assert "${MLSCALE_TEST_MLFLOW_PASSWORD}" in leaving
    assert "${MLSCALE_TEST_JOBS}" in command
    words = shlex.split(command)
    sets = [value for flag, value in zip(words, words[1:], strict=False) if flag == "--set"]
    received = load_config(None, parse_overrides(sets))
    assert received.tracking.uri == uri and received.monitor.retrain.jobs_address == os.environ["MLSCALE_TEST_JOBS"]
    monkeypatch.delenv("MLSCALE_TEST_MLFLOW_PASSWORD")
    with pytest.raises(ConfigError, match="tracking.uri holds a credential that no environment variable"):
        retrain_entrypoint(config)


def test_a_searched_field_must_be_a_config_field():
    """tune.space.params is checked against the whole config at its root; the message names the dotted field."""
    searched = {"tune": {"space": {"params": {"train.optimizer.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}}}
    assert config_from_dict(searched).tune.space.params["train.optimizer.lr"].log
    for dotted in ("train.optimizer.nope", "nosuchsection.lr", "train.epochs.deeper"):
        with pytest.raises(ConfigError, match=rf"tune\.space\.params: '{dotted}' is not a config field"):
            config_from_dict({"tune": {"space": {"params": {dotted: {"low": 0, "high": 1}}}}})
