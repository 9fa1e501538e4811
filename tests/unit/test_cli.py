import pytest
from typer.testing import CliRunner

from mlscale.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["run", "prepare", "train", "serve", "predict"])
def test_every_command_has_help_and_config(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--config" in result.output


def test_bad_config_is_a_readable_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("serve:\n  port: 70000\n")
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert "serve.port" in result.output and "70000" in result.output


def test_bad_override_is_a_readable_error():
    result = runner.invoke(app, ["train", "--set", "train.epochs=-1"])
    assert result.exit_code == 2
    assert "train.epochs" in result.output


def test_registry_commands_have_help():
    for command in ("list", "register", "alias", "compare", "promote"):
        result = runner.invoke(app, ["registry", command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--config" in result.output


def test_registry_list_of_an_unknown_model_is_a_readable_error(tmp_path, monkeypatch):
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the command exports them; undone after the test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    result = runner.invoke(app, ["registry", "list", "--set", f"storage.root={tmp_path}", "--name", "nobody"])
    assert result.exit_code == 2
    assert "cannot list 'nobody'" in result.output


ERROR_KINDS = [
    ("ConfigError", 2), ("SourceError", 3), ("SchemaError", 3), ("PreparedDataMissing", 3),
    ("ExpressionError", 5), ("PromotionError", 6), ("PromotionConflict", 6), ("NothingToServe", 6),
    ("SearchError", 7), ("NoWinner", 7), ("ServingError", 8), ("TrainingFailed", 9), ("MlscaleError", 1),
]


@pytest.mark.parametrize(("kind", "code"), ERROR_KINDS)
def test_each_error_kind_is_a_message_and_its_exit_code(kind, code, monkeypatch):
    """Every stage error reaches the shell as one line and the documented code; no traceback without --debug."""
    import mlscale.entry
    import mlscale.errors

    error = getattr(mlscale.errors, kind)(f"the {kind} message")

    def fail(config, **kwargs):
        raise error

    monkeypatch.setitem(mlscale.entry.STAGES, "train", fail)
    result = runner.invoke(app, ["train"])
    assert result.exit_code == code == mlscale.errors.EXIT_CODES[kind]
    assert f"the {kind} message" in result.output and "Traceback" not in result.output
    debug = runner.invoke(app, ["--debug", "train"])
    assert debug.exit_code == code and "Traceback" in debug.output


def test_job_scripts_map_errors_the_same_way(monkeypatch, capsys):
    import mlscale.entry
    from mlscale.errors import ValidationFailed

    class Report:
        def render(self) -> str:
            return "rule x broke 9 rows"

    def fail(config):
        raise ValidationFailed(Report(), "/tmp/prepared/_report.json")

    monkeypatch.setitem(mlscale.entry.STAGES, "prepare", fail)
    assert mlscale.entry.job_main("prepare", []) == 4
    assert "rule x broke 9 rows" in capsys.readouterr().err


def test_a_bug_is_not_swallowed(monkeypatch):
    """Only mlscale's own errors become messages: anything else keeps its traceback."""
    import mlscale.entry

    def fail(config):
        raise KeyError("a bug")

    monkeypatch.setitem(mlscale.entry.STAGES, "train", fail)
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_version():
    from mlscale.version import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mlscale {__version__}"


def test_the_public_api_lists_what_it_exports():
    import mlscale

    assert set(mlscale.__all__) == set(mlscale._EXPORTS) | {"__version__"}
    import inspect

    for name in mlscale.__all__:
        value = getattr(mlscale, name)
        if callable(value) and not isinstance(value, type):
            assert value.__doc__, f"mlscale.{name} has no docstring"
            missing = [p for p in inspect.signature(value).parameters if p not in value.__doc__]
            assert not missing, f"mlscale.{name}'s docstring does not describe {missing}"


def test_config_show_prints_the_resolved_config_which_loads_back(tmp_path, monkeypatch):
    import yaml

    from mlscale.config import load_config

    monkeypatch.setenv("MLSCALE_STORAGE", str(tmp_path / "store"))
    source = tmp_path / "base.yaml"
    source.write_text("name: shown\nstorage:\n  root: ${MLSCALE_STORAGE}\ntracking:\n  uri: postgresql://u:pw@db/ml\n")
    result = runner.invoke(app, ["config", "show", "--config", str(source), "--set", "train.epochs=7"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["storage"]["root"] == str(tmp_path / "store") and shown["train"]["epochs"] == 7
    assert shown["tracking"]["uri"] == "postgresql://u:***@db/ml" and "pw" not in result.output
    (tmp_path / "shown.yaml").write_text(result.output)
    again = load_config(tmp_path / "shown.yaml")
    expected = load_config(source, {"train.epochs": 7})
    assert again.fingerprint() == expected.fingerprint()


def test_config_schema_is_a_json_schema_that_validates_the_examples():
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    result = runner.invoke(app, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "PipelineConfig" and "split" in schema["properties"]
    from mlscale.config import load_config

    repo = Path(__file__).resolve().parents[2]
    for name in ("flights.yaml", "flights-small.yaml"):  # as resolved (a raw ${VAR} is no integer yet)
        shown = runner.invoke(app, ["config", "show", "--config", str(repo / "jobs" / "configs" / name)]).output
        jsonschema.validate(yaml.safe_load(shown), schema)
        assert load_config(repo / "jobs" / "configs" / name).name in shown
    with pytest.raises(jsonschema.ValidationError, match="epoch"):
        jsonschema.validate({"train": {"epoch": 3}}, schema)
