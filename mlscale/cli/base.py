"""The root `mlscale` command and what every command group shares: the config options, errors as exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlscale.config import PipelineConfig, load_config, parse_overrides
from mlscale.errors import ConfigError, MlscaleError

app = typer.Typer(help="mlscale: data to a monitored model service on one Ray cluster.", no_args_is_help=True)
_options = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from mlscale.version import __version__

        typer.echo(f"mlscale {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error, not only its message.")]
    = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
) -> None:
    """Errors are printed as one message with a documented exit code per kind (see mlscale.errors)."""
    from mlscale.logs import configure_logging

    _options["debug"] = debug
    configure_logging("DEBUG" if debug else None)


def fail(command: str, error: MlscaleError) -> typer.Exit:
    from mlscale.entry import report_error

    return typer.Exit(report_error(command, error, _options["debug"]))

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline config YAML (default: built-in).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value, e.g. --set train.epochs=2.")
]


def pipeline_config(path: Path | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(path, parse_overrides(overrides or []))
    except ConfigError as error:
        raise fail("config", error) from None


BlockOption = Annotated[
    bool, typer.Option("--block", help="Keep serving until Ctrl-C (an embedded Ray stops when this command ends).")
]
