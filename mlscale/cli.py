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
def tune(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Search hyperparameters and architectures (Ray Tune + Optuna, ASHA); register the winner as challenger.

    Rerunning the same command resumes an interrupted sweep."""
    _run("tune", _config(config, set_))


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


registry = typer.Typer(help="The model registry: versions, aliases (champion, challenger), compare, promote.",
                       no_args_is_help=True)
app.add_typer(registry, name="registry")
NameOption = Annotated[str | None, typer.Option("--name", help="Default: tracking.registered_model.")]


def _registry_config(config: Path | None, overrides: list[str] | None, name: str | None) -> PipelineConfig:
    from mlscale.pipeline import start_tracking

    settings = _config(config, overrides)
    if name:
        settings = settings.model_copy(update={"tracking": settings.tracking.model_copy(
            update={"registered_model": name})})
    start_tracking(settings)
    return settings


@registry.command("list")
def registry_list(config: ConfigOption = None, set_: SetOption = None, name: NameOption = None) -> None:
    """Every version, newest first, with its aliases, metrics and lineage."""
    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.table import Table

    from mlscale.registry.store import list_versions

    settings = _registry_config(config, set_, name)
    try:
        versions = list_versions(settings.tracking.registered_model)
    except MlflowException as error:
        typer.secho(f"cannot list {settings.tracking.registered_model!r}: {error.message}", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"{settings.tracking.registered_model}: {len(versions)} version(s)")
    metric = settings.metric[0]
    test_metric = f"test_{metric.removeprefix('val_')}"
    for column in ("version", "aliases", metric, test_metric, "run", "code"):
        table.add_column(column)
    for info in versions:
        table.add_row(info.version, ", ".join(info.aliases), f"{info.metrics.get(metric, float('nan')):.5f}",
                      f"{info.metrics.get(test_metric, float('nan')):.5f}", info.run_id[:12],
                      info.tags.get("code_version", "")[:12])
    Console().print(table)
    typer.echo("MLSCALE_REGISTRY " + json.dumps([info.__dict__ for info in versions]))


@registry.command("register")
def registry_register(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder (bundle.json + weights.pt).")],
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
    alias: Annotated[str | None, typer.Option(help="Also point this alias at the new version.")] = None,
) -> None:
    """Register a bundle folder as a new version."""
    from mlscale.registry.store import register_path, set_alias

    settings = _registry_config(config, set_, name)
    registered = register_path(bundle_dir, settings.tracking.registered_model)
    if alias:
        set_alias(registered.name, alias, registered.version)
    typer.echo(json.dumps({"name": registered.name, "version": registered.version, "alias": alias}))


@registry.command("alias")
def registry_alias(
    alias: Annotated[str, typer.Argument(help="e.g. champion or challenger")],
    version: Annotated[str, typer.Argument(help="The version the alias should point at.")],
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
) -> None:
    """Set or move an alias."""
    from mlscale.registry.store import set_alias

    settings = _registry_config(config, set_, name)
    set_alias(settings.tracking.registered_model, alias, version)
    typer.echo(json.dumps({"name": settings.tracking.registered_model, "alias": alias, "version": version}))


ChallengerOption = Annotated[str, typer.Option(help="Alias or version of the challenger.")]
ChampionOption = Annotated[str, typer.Option(help="Alias or version of the champion.")]


@registry.command("compare")
def registry_compare(
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
    challenger: ChallengerOption = "challenger", champion: ChampionOption = "champion",
    split: Annotated[str, typer.Option(help="Prepared split both are scored on.")] = "test",
) -> None:
    """Score challenger and champion on the same prepared split and show both metrics."""
    _print_comparison(_compare(config, set_, name, challenger, champion, split))


def _compare(config: Path | None, overrides: list[str] | None, name: str | None, challenger: str, champion: str,
             split: str) -> Any:
    from mlscale.cluster import ensure_ray
    from mlscale.data.prepare import load_prepared
    from mlscale.promotion import compare

    settings = _registry_config(config, overrides, name)
    ensure_ray(settings.ray)
    return settings, compare(settings, load_prepared(settings).read(split), challenger, champion, split)


def _print_comparison(outcome: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    _, comparison = outcome
    table = Table(title=f"{comparison.metric} ({comparison.mode} is better)")
    table.add_column("metric")
    table.add_column(f"challenger {comparison.challenger['uri']}")
    table.add_column(f"champion {comparison.champion['uri'] if comparison.champion else '(none)'}")
    for key, value in comparison.challenger["metrics"].items():
        theirs = comparison.champion["metrics"].get(key) if comparison.champion else None
        table.add_row(key, f"{value:.6g}", "" if theirs is None else f"{theirs:.6g}")
    Console().print(table)
    typer.echo("MLSCALE_COMPARISON " + json.dumps(comparison.to_dict()))


@registry.command("promote")
def registry_promote(
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
    source: Annotated[str, typer.Option("--from", help="Alias whose version is promoted.")] = "challenger",
    target: Annotated[str, typer.Option("--to", help="Alias that is moved.")] = "champion",
    if_better: Annotated[bool, typer.Option(help="Only when it beats the target on the test split.")] = False,
) -> None:
    """Move the champion alias to the challenger's version (the old one stays as previous_champion)."""
    from mlscale.registry.store import promote

    if if_better:
        outcome = _compare(config, set_, name, source, target, "test")
        _print_comparison(outcome)
        settings, comparison = outcome
        if not comparison.better:
            typer.secho(f"not promoted: {comparison.reason}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(3)
    else:
        settings = _registry_config(config, set_, name)
    try:
        version = promote(settings.tracking.registered_model, source, target)
    except ValueError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"name": settings.tracking.registered_model, "alias": target, "version": version}))


if __name__ == "__main__":
    app()
