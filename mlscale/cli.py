"""The `mlscale` command: the same stages as jobs/, for a terminal."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mlscale.config import PipelineConfig, load_config, parse_overrides
from mlscale.errors import ConfigError, MlscaleError, PromotionError, describe_fields

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


def _fail(command: str, error: MlscaleError) -> typer.Exit:
    from mlscale.entry import report_error

    return typer.Exit(report_error(command, error, _options["debug"]))

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Pipeline config YAML (default: built-in).")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value, e.g. --set train.epochs=2.")
]


def _config(path: Path | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(path, parse_overrides(overrides or []))
    except ConfigError as error:
        raise _fail("config", error) from None


BlockOption = Annotated[
    bool, typer.Option("--block", help="Keep serving until Ctrl-C (an embedded Ray stops when this command ends).")
]


def _run(stage: str, config: PipelineConfig, block: bool = False, **kwargs: Any) -> None:
    from mlscale.entry import failed_checks, print_summary, run_stage

    try:
        summary = run_stage(stage, config, **kwargs)
    except MlscaleError as error:
        raise _fail(stage, error) from None
    print_summary(f"mlscale {stage}", summary)
    failure = failed_checks(summary)
    if failure is not None:
        raise _fail(stage, failure)
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
def score(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: score.model, else the serving alias.")] = None,
    force: Annotated[bool, typer.Option(help="Score again even when the committed scores match.")] = False,
) -> None:
    """Batch-score the data section's source with a registered model: parquet of the kept columns, the prediction
    and the model version; invalid rows quarantined with their reasons (point data.path at the new rows)."""
    _run("score", _config(config, set_), model_uri=model_uri, force=force)


@app.command()
def canary(
    config: ConfigOption = None,
    set_: SetOption = None,
    challenger: Annotated[str, typer.Option(help="A version number or alias of the registered model.")] = "challenger",
) -> None:
    """Release the challenger as a canary beside the champion; promote it or roll it back on live numbers
    (serve.canary: traffic share, thresholds). Ends when decided; the decision is recorded in MLflow and the
    release log."""
    _run("canary", _config(config, set_), challenger=challenger)


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
    settings = _config(config, set_)
    while True:
        _run("monitor", settings, model_uri=model_uri)
        if every is None:
            return
        time.sleep(every)


@app.command()
def retrain(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Train on the split's windows, judge against the champion on its test windows, and canary the new version
    when it beats the champion by monitor.retrain.min_delta (the monitor submits this job by itself)."""
    _run("retrain", _config(config, set_))


@app.command()
def replay(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Replay later windows of the data (replay.windows, e.g. months) through the service as live traffic, labels
    arriving late, the monitor (and its retraining loop) after each; a per-window report and plots."""
    _run("replay", _config(config, set_))


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

    settings = _config(config, set_)
    try:
        text = serve_config_yaml(settings, model_uri, host)
    except MlscaleError as error:
        raise _fail("serve-config", error) from None
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
    from mlscale.data.schema import record_name
    from mlscale.registry.store import load_bundle
    from mlscale.serve.requests import RequestParser, RequestRejected

    settings = _config(config, set_)
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


config_app = typer.Typer(help="The pipeline config: the resolved values, and its JSON Schema for editors.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """The config as the stages will see it (YAML, then ${VAR}, then --set), credentials hidden."""
    import yaml

    from mlscale.tracking import redacted_config

    typer.echo(yaml.safe_dump(redacted_config(_config(config, set_)), sort_keys=False), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """The JSON Schema of the pipeline config (point an editor's YAML language server at it)."""
    typer.echo(json.dumps(PipelineConfig.model_json_schema(by_alias=True), indent=2))


cluster_app = typer.Typer(help="The one cluster definition (cluster/definition.yaml) and the files made from it.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
DefinitionOption = Annotated[Path, typer.Option("--definition", help="The cluster definition YAML.")]


@cluster_app.command("show")
def cluster_show(definition: DefinitionOption = Path("cluster/definition.yaml")) -> None:
    """The resolved definition: image and Ray version, node groups with their capacity type, storage, tracking."""
    import yaml

    from mlscale.clusterdef import load_definition

    typer.echo(yaml.safe_dump(load_definition(definition).model_dump(mode="json"), sort_keys=False), nl=False)


@cluster_app.command("render")
def cluster_render(definition: DefinitionOption = Path("cluster/definition.yaml")) -> None:
    """Write the launcher YAML and the KubeRay manifests from the definition (a test fails when they drift)."""
    from mlscale.clusterdef import write_rendered

    for path in write_rendered(definition):
        typer.echo(f"wrote {path}")


AddressOption = Annotated[str | None, typer.Option(help="The Jobs API, http://<head>:8265 (default: "
                                                      "RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS).")]


@cluster_app.command("submit")
def cluster_submit(
    stage: Annotated[str, typer.Argument(help="pipeline, prepare, train, tune, deploy, score, canary, monitor, "
                                              "retrain or replay.")],
    config: Annotated[str | None, typer.Option(help="The pipeline config, a path under the project or a "
                                                    "built-in example name.")] = None,
    set_: SetOption = None,
    address: AddressOption = None,
    definition: DefinitionOption = Path("cluster/definition.yaml"),
    wait: Annotated[bool, typer.Option(help="Follow the job's logs to its end; exit with its status.")] = True,
) -> None:
    """Submit a stage as a Ray job to the cluster (the project folder as working_dir, token auth from
    RAY_AUTH_TOKEN or ~/.ray/auth_token, the driver's resources from the definition's `jobs`); the same as
    `ray job submit --entrypoint-num-cpus 1 --entrypoint-resources '{"driver": 1}' -- python jobs/<stage>.py ...`."""
    from ray.job_submission import JobStatus

    from mlscale.clusterdef import load_definition
    from mlscale.submit import forwarded_env, job_entrypoint, job_runtime_env

    try:
        jobs = load_definition(definition).jobs
        client = _jobs_client("cluster submit", address)
        job_id = client.submit_job(entrypoint=job_entrypoint(stage, config, set_),
                                   runtime_env=job_runtime_env(Path.cwd(), forwarded_env()),
                                   entrypoint_num_cpus=jobs.entrypoint_num_cpus,
                                   entrypoint_resources=jobs.entrypoint_resources or None,
                                   metadata={"mlscale.stage": stage})
    except MlscaleError as error:
        raise _fail("cluster submit", error) from None
    typer.echo(f"submitted {job_id}")
    if not wait:
        return
    followed = _follow(client, job_id)
    # the stream can end early (a driver on another node than the head): print what it did not show
    logs = client.get_job_logs(job_id)
    typer.echo(logs[len(followed):] if logs.startswith(followed) else logs, nl=False)
    status = client.get_job_status(job_id)
    typer.echo(f"job {job_id}: {status.value}")
    if status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def _jobs_client(command: str, address: str | None) -> Any:
    """The Jobs API client for a `cluster` command; a readable error when no address is known."""
    from ray.job_submission import JobSubmissionClient

    from mlscale.submit import jobs_address

    try:
        return JobSubmissionClient(jobs_address(address))
    except MlscaleError as error:
        raise _fail(command, error) from None


def _follow(client: Any, job_id: str) -> str:
    """Print a job's logs as they arrive (not once it has ended); what was printed."""
    import asyncio

    async def tail() -> str:
        shown = ""
        async for chunk in client.tail_job_logs(job_id):
            typer.echo(chunk, nl=False)
            shown += chunk
        return shown

    return asyncio.run(tail())


@cluster_app.command("logs")
def cluster_logs(job_id: str, address: AddressOption = None) -> None:
    """A job's logs so far."""
    typer.echo(_jobs_client("cluster logs", address).get_job_logs(job_id), nl=False)


@cluster_app.command("status")
def cluster_status(job_id: Annotated[str | None, typer.Argument()] = None, address: AddressOption = None) -> None:
    """One job's status, or every job's (id, status, stage, entrypoint)."""
    client = _jobs_client("cluster status", address)
    if job_id:
        typer.echo(client.get_job_status(job_id).value)
        return
    for job in client.list_jobs():
        typer.echo(f"{job.submission_id or job.job_id}\t{job.status.value}\t"
                   f"{(job.metadata or {}).get('mlscale.stage', '-')}\t{job.entrypoint}")


@cluster_app.command("stop")
def cluster_stop(job_id: str, address: AddressOption = None) -> None:
    """Stop a running job (a train job resumes from its checkpoint when submitted again)."""
    stopped = _jobs_client("cluster stop", address).stop_job(job_id)
    typer.echo(f"{job_id}: {'stopping' if stopped else 'not running'}")


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

    settings = _config(config, set_)
    uri = model_uri or settings.serving_uri
    try:
        start(settings)
        evaluation = evaluate_model(settings.evaluate, load_prepared(settings).read(split), uri,
                                    settings.tracking_uri, split)
    except MlscaleError as error:
        raise _fail("evaluate", error) from None
    from mlscale.entry import print_summary

    print_summary(f"mlscale evaluate {uri} on {split}", {"model_uri": uri, "split": split, **evaluation.metrics})
    typer.echo("MLSCALE_EVALUATION " + json.dumps(evaluation.to_dict()))


registry = typer.Typer(help="The model registry: versions, aliases (champion, challenger), compare, promote.",
                       no_args_is_help=True)
app.add_typer(registry, name="registry")
NameOption = Annotated[str | None, typer.Option("--name", help="Default: tracking.registered_model.")]


def _registry_config(config: Path | None, overrides: list[str] | None, name: str | None) -> PipelineConfig:
    from mlscale.tracking import start_tracking

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

    from mlscale.cluster import ensure_ray
    from mlscale.data.prepare import load_prepared
    from mlscale.promotion import judge_against_champion

    settings = _registry_config(config, overrides, name)
    try:
        ensure_ray(settings.ray)
        decision = judge_against_champion(settings, load_prepared(settings).read(split), challenger, champion,
                                          split, policy=policy)
    except MlscaleError as error:
        raise _fail("registry", error) from None
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
    from mlscale.promotion import Measurement, apply_decision, decide, resolve_version
    from mlscale.registry.store import version_of

    if if_better:
        settings, decision = _judge(config, set_, name, source, target, "test", "if_better")
    else:
        settings = _registry_config(config, set_, name)
        model, uri = settings.tracking.registered_model, settings.tracking_uri
        version = resolve_version(model, source, uri)
        if version is None:
            raise _fail("registry", PromotionError(f"model {model!r} has no version with alias {source!r}"))
        current = version_of(model, target, uri)
        decision = decide(model, target, "always", "manual_promotion", "max", 0.0,
                          Measurement(version, {"manual_promotion": 1.0}),
                          Measurement(current, {"manual_promotion": 0.0}) if current else None)
    if not decision.promote:
        raise _fail("registry", PromotionError(f"not promoted: {decision.reason}"))
    try:
        apply_decision(decision, settings.tracking_uri)
    except MlscaleError as error:
        raise _fail("registry", error) from None
    typer.echo(json.dumps({"name": decision.model, "alias": target, "version": decision.challenger_version,
                           "previous": decision.champion_version}))


if __name__ == "__main__":
    app()
