"""The `mlscale` command: the same stages as jobs/, for a terminal."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mlscale.config import ConfigError, PipelineConfig, load_config, parse_overrides

app = typer.Typer(help="mlscale: data to a monitored model service on one Ray cluster.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline config YAML (default: built-in).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value, e.g. --set train.epochs=2.")
]


def _config(path: Path | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(path, parse_overrides(overrides or []))
    except ConfigError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


BlockOption = Annotated[
    bool, typer.Option("--block", help="Keep serving until Ctrl-C (an embedded Ray stops when this command ends).")
]


def _run(stage: str, config: PipelineConfig, block: bool = False, **kwargs: Any) -> None:
    from mlscale.stages import DATA_ERRORS, STAGES, print_summary

    try:
        summary = STAGES[stage](config, **kwargs)
    except DATA_ERRORS as error:
        typer.secho(f"mlscale {stage} failed: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    print_summary(f"mlscale {stage}", summary)
    if block:
        typer.echo(f"serving at {summary['endpoint']} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def run(config: ConfigOption = None, set_: SetOption = None, block: BlockOption = False) -> None:
    """Run the whole pipeline: prepare, train, register, deploy, and check served == batch predictions."""
    _run("pipeline", _config(config, set_), block)


@app.command()
def prepare(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Read, validate (quarantining bad rows), split and write the data."""
    _run("prepare", _config(config, set_))


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Fit features, train with Ray Train, register the bundle and evaluate it on the test split."""
    _run("train", _config(config, set_))


@app.command()
def serve(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
    check: Annotated[bool, typer.Option(help="Compare served with batch predictions on held-out rows.")] = True,
    block: BlockOption = False,
) -> None:
    """Deploy a registered bundle with Ray Serve (on a cluster it keeps running after this command)."""
    _run("deploy", _config(config, set_), block, model_uri=model_uri, check=check)


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(help="JSON file: one record or a list of records.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
) -> None:
    """Predict for raw records with a registered bundle, locally, through the same code as serving."""
    from pydantic import TypeAdapter, ValidationError

    from mlscale.data.schema import request_model
    from mlscale.registry.store import load_bundle

    settings = _config(config, set_)
    try:
        records = json.loads(input_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise typer.BadParameter(f"cannot read records from {input_path}: {error}") from None
    records = [records] if isinstance(records, dict) else records
    uri = model_uri or f"models:/{settings.tracking.registered_model}@{settings.tracking.alias}"
    bundle = load_bundle(uri, settings.tracking_uri)
    try:  # the same rules as the HTTP service: a bad record is named, never guessed at
        validated = TypeAdapter(list[request_model(bundle.input_schema)]).validate_python(records)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"])
            typer.secho(f"record {where}: {item['msg']} (got {item.get('input')!r})", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    probabilities = bundle.predict_records([record.model_dump() for record in validated]).tolist()
    typer.echo(json.dumps({"model_uri": uri, "predictions": probabilities}))


if __name__ == "__main__":
    app()
