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
