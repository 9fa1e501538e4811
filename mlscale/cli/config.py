"""`mlscale config`: the resolved config, and its JSON Schema for editors."""

from __future__ import annotations

import json

import typer

from mlscale.cli.base import ConfigOption, SetOption, app, pipeline_config
from mlscale.config import PipelineConfig

config_app = typer.Typer(help="The pipeline config: the resolved values, and its JSON Schema for editors.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """The config as the stages will see it (YAML, then ${VAR}, then --set), credentials hidden."""
    import yaml

    from mlscale.tracking import redacted_config

    typer.echo(yaml.safe_dump(redacted_config(pipeline_config(config, set_)), sort_keys=False), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """The JSON Schema of the pipeline config (point an editor's YAML language server at it)."""
    typer.echo(json.dumps(PipelineConfig.model_json_schema(by_alias=True), indent=2))
