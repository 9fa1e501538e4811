"""`mlscale registry`: versions, aliases (champion, challenger), compare and promote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mlscale.cli.base import ConfigOption, SetOption, app, fail, pipeline_config
from mlscale.config import PipelineConfig
from mlscale.errors import MlscaleError, PromotionError

registry = typer.Typer(help="The model registry: versions, aliases (champion, challenger), compare, promote.",
                       no_args_is_help=True)
app.add_typer(registry, name="registry")
NameOption = Annotated[str | None, typer.Option("--name", help="Default: tracking.registered_model.")]


def _registry_config(config: Path | None, overrides: list[str] | None, name: str | None) -> PipelineConfig:
    from mlscale.tracking import start_tracking

    settings = pipeline_config(config, overrides)
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
    test_metric = f"test_{settings.metric_stem}"
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
ChampionOption = Annotated[str, typer.Option(help="The alias the challenger is measured against.")]


@registry.command("compare")
def registry_compare(
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
    challenger: ChallengerOption = "challenger", champion: ChampionOption = "champion",
    split: Annotated[str, typer.Option(help="Prepared split both are scored on.")] = "test",
) -> None:
    """Score challenger and champion on the same prepared split and show the decision if_better would make."""
    _judge(config, set_, name, challenger, champion, split, "if_better")


def _judge(config: Path | None, overrides: list[str] | None, name: str | None, challenger: str, champion: str,
           split: str, policy: str) -> tuple[PipelineConfig, Any]:
    """Measure both pinned versions on the split, decide by the policy, and show the decision."""
    from rich.console import Console
    from rich.table import Table

    from mlscale.cluster.connect import ensure_ray
    from mlscale.data.prepare import load_prepared
    from mlscale.promotion import judge_against_champion

    settings = _registry_config(config, overrides, name)
    try:
        ensure_ray(settings.ray)
        decision = judge_against_champion(settings, load_prepared(settings).read(split), challenger, champion,
                                          split, policy=policy)
    except MlscaleError as error:
        raise fail("registry", error) from None
    table = Table(title=f"{decision.metric} ({decision.mode} is better)")
    for column in ("", f"challenger v{decision.challenger_version}", f"{champion} v{decision.champion_version}"):
        table.add_column(column)
    table.add_row(decision.metric, f"{decision.challenger_value:.6g}",
                  "" if decision.champion_value is None else f"{decision.champion_value:.6g}")
    Console().print(table)
    typer.echo("MLSCALE_DECISION " + json.dumps(decision.to_dict()))
    return settings, decision


@registry.command("promote")
def registry_promote(
    config: ConfigOption = None, set_: SetOption = None, name: NameOption = None,
    source: Annotated[str, typer.Option("--from", help="Alias or version to promote.")] = "challenger",
    target: Annotated[str, typer.Option("--to", help="Alias that is moved.")] = "champion",
    if_better: Annotated[bool, typer.Option(help="Only when it beats the target on the test split.")] = False,
) -> None:
    """Move the champion alias to the challenger's version (the old one stays as previous_champion).

    The move is a compare-and-set: it fails (exit 6) if the target alias changed while this command ran.
    """
    from mlscale.promotion import apply_decision, judged_elsewhere, resolve_version
    from mlscale.registry.store import version_of

    if if_better:
        settings, decision = _judge(config, set_, name, source, target, "test", "if_better")
    else:
        settings = _registry_config(config, set_, name)
        model, uri = settings.tracking.registered_model, settings.tracking_uri
        version = resolve_version(model, source, uri)
        if version is None:
            raise fail("registry", PromotionError(f"model {model!r} has no version with alias {source!r}"))
        current = version_of(model, target, uri)
        decision = judged_elsewhere(model, target, version, current, "manual",
                                    f"manual: `mlscale registry promote --from {source}`")
    if not decision.promote:
        raise fail("registry", PromotionError(f"not promoted: {decision.reason}"))
    try:
        apply_decision(decision, settings.tracking_uri)
    except MlscaleError as error:
        raise fail("registry", error) from None
    typer.echo(json.dumps({"name": decision.model, "alias": target, "version": decision.challenger_version,
                           "previous": decision.champion_version}))


if __name__ == "__main__":
    app()
