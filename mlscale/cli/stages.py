"""The stage commands (run, prepare, train, tune, serve, score, canary, monitor, ...): the same stages as jobs/."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mlscale.cli.base import BlockOption, ConfigOption, SetOption, app, fail, pipeline_config
from mlscale.config import PipelineConfig
from mlscale.errors import MlscaleError, describe_fields


def _run(stage: str, config: PipelineConfig, block: bool = False, **kwargs: Any) -> None:
    from mlscale.entry import failed_checks, print_summary, run_stage

    try:
        summary = run_stage(stage, config, **kwargs)
    except MlscaleError as error:
        raise fail(stage, error) from None
    print_summary(f"mlscale {stage}", summary)
    failure = failed_checks(summary)
    if failure is not None:
        raise fail(stage, failure)
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
    _run("pipeline", pipeline_config(config, set_), block)


@app.command()
def prepare(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Read, validate (quarantining bad rows), split and write the data."""
    _run("prepare", pipeline_config(config, set_))


@app.command()
def train(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Fit features, train with Ray Train, register the bundle and evaluate it on the test split."""
    _run("train", pipeline_config(config, set_))


@app.command()
def tune(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Search hyperparameters and architectures (Ray Tune + Optuna, ASHA); register the winner as challenger.

    Rerunning the same command resumes an interrupted sweep."""
    _run("tune", pipeline_config(config, set_))


@app.command()
def serve(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
    check: Annotated[bool, typer.Option(help="Compare served with batch predictions on held-out rows.")] = True,
    block: BlockOption = False,
) -> None:
    """Deploy a registered bundle with Ray Serve (on a cluster it keeps running after this command)."""
    _run("deploy", pipeline_config(config, set_), block, model_uri=model_uri, check=check)


@app.command()
def score(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: score.model, else the serving alias.")] = None,
    force: Annotated[bool, typer.Option(help="Score again even when the committed scores match.")] = False,
) -> None:
    """Batch-score the data section's source with a registered model: parquet of the kept columns, the prediction
    and the model version; invalid rows quarantined with their reasons (point data.path at the new rows)."""
    _run("score", pipeline_config(config, set_), model_uri=model_uri, force=force)


@app.command()
def canary(
    config: ConfigOption = None,
    set_: SetOption = None,
    challenger: Annotated[str, typer.Option(help="A version number or alias of the registered model.")] = "challenger",
) -> None:
    """Release the challenger as a canary beside the champion; promote it or roll it back on live numbers
    (serve.canary: traffic share, thresholds). Ends when decided; the decision is recorded in MLflow and the
    release log."""
    _run("canary", pipeline_config(config, set_), challenger=challenger)


@app.command()
def monitor(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Whose training profile is the reference (default: the "
                                                       "serving alias).")] = None,
    every: Annotated[float | None, typer.Option(help="Run again every this many seconds (a schedule without "
                                                     "cron); default: once.")] = None,
) -> None:
    """Judge the prediction log's windows for drift, prediction drift and (with monitor.labels) decay against the
    serving model: a report, plots and an MLflow run; decide whether to retrain and, with monitor.retrain.enabled,
    submit the retrain job (serve.prediction_log must be on)."""
    settings = pipeline_config(config, set_)
    while True:
        _run("monitor", settings, model_uri=model_uri)
        if every is None:
            return
        time.sleep(every)


@app.command()
def retrain(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Train on the split's windows, judge against the champion on its test windows, and canary the new version
    when it beats the champion by monitor.retrain.min_delta (the monitor submits this job by itself)."""
    _run("retrain", pipeline_config(config, set_))


@app.command()
def replay(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Replay later windows of the data (replay.windows, e.g. months) through the service as live traffic, labels
    arriving late, the monitor (and its retraining loop) after each; a per-window report and plots."""
    _run("replay", pipeline_config(config, set_))


@app.command("serve-config")
def serve_config(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the file here (default: print it).")] = None,
    host: Annotated[str, typer.Option(help="Where the Serve proxies listen.")] = "0.0.0.0",
) -> None:
    """Write the Serve config file (`serve deploy`, KubeRay RayService serveConfigV2) for the configured app, with
    the model version pinned."""
    from mlscale.serve.config_file import serve_config_yaml

    settings = pipeline_config(config, set_)
    try:
        text = serve_config_yaml(settings, model_uri, host)
    except MlscaleError as error:
        raise fail("serve-config", error) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(help="JSON file: one record or a list of records.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
) -> None:
    """Predict for raw records with a registered bundle, locally, through the same code as serving."""
    from mlscale.registry.store import load_bundle
    from mlscale.serve.requests import RequestParser, RequestRejected, record_name

    settings = pipeline_config(config, set_)
    try:
        body = input_path.read_bytes()
    except OSError as error:
        raise typer.BadParameter(f"cannot read records from {input_path}: {error}") from None
    uri = model_uri or settings.serving_uri
    bundle = load_bundle(uri, settings.tracking_uri)
    # the HTTP service's own parser: the same shapes, limits aside, and the same field-naming refusals
    parser = RequestParser(list(bundle.input_schema), max_records=2**31, max_body_bytes=2**62,
                           record_name=record_name(settings.name), unknown_fields=settings.serve.unknown_fields,
                           passthrough=tuple(bundle.passthrough_columns))
    try:
        records = parser.parse(body)
    except RequestRejected as rejected:
        for line in describe_fields(rejected.detail):
            typer.secho(line, fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"model_uri": uri, "predictions": bundle.predict_records(records).tolist()}))



@app.command()
def evaluate(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<registered_model>@<alias>.")] = None,
    split: Annotated[str, typer.Option(help="The prepared split to score (train, val, test).")] = "test",
) -> None:
    """Score a registered version on a prepared split: metrics, slices and calibration, as in training."""
    from mlscale.data.prepare import load_prepared
    from mlscale.promotion import evaluate_model
    from mlscale.stages.common import start

    settings = pipeline_config(config, set_)
    uri = model_uri or settings.serving_uri
    try:
        start(settings)
        evaluation = evaluate_model(settings.evaluate, load_prepared(settings).read(split), uri,
                                    settings.tracking_uri, split)
    except MlscaleError as error:
        raise fail("evaluate", error) from None
    from mlscale.entry import print_summary

    print_summary(f"mlscale evaluate {uri} on {split}", {"model_uri": uri, "split": split, **evaluation.metrics})
    typer.echo("MLSCALE_EVALUATION " + json.dumps(evaluation.to_dict()))
