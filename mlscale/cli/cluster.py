"""`mlscale cluster`: the one cluster definition, the files rendered from it, and jobs submitted to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mlscale.cli.base import SetOption, app, fail
from mlscale.errors import MlscaleError

cluster_app = typer.Typer(help="The one cluster definition (cluster/definition.yaml) and the files made from it.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
T = TypeVar("T")
DefinitionOption = Annotated[Path, typer.Option("--definition", help="The cluster definition YAML.")]


@cluster_app.command("show")
def cluster_show(definition: DefinitionOption = Path("cluster/definition.yaml")) -> None:
    """The resolved definition: image and Ray version, node groups with their capacity type, storage, tracking."""
    import yaml

    from mlscale.cluster.definition import load_definition

    typer.echo(yaml.safe_dump(load_definition(definition).model_dump(mode="json"), sort_keys=False), nl=False)


@cluster_app.command("render")
def cluster_render(definition: DefinitionOption = Path("cluster/definition.yaml")) -> None:
    """Write the launcher YAML and the KubeRay manifests from the definition (a test fails when they drift)."""
    from mlscale.cluster.render import write_rendered

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

    from mlscale.cluster.definition import load_definition
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
        raise fail("cluster submit", error) from None
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
        raise fail(command, error) from None


def _answer(command: str, call: Callable[[], T]) -> T:
    """A Jobs API call; what the API refuses (an unknown job id, an unreachable dashboard) as a readable error."""
    try:
        return call()
    except (RuntimeError, ConnectionError) as error:  # the client raises RuntimeError with the API's own message
        raise fail(command, MlscaleError(str(error))) from None


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
    client = _jobs_client("cluster logs", address)
    typer.echo(_answer("cluster logs", lambda: client.get_job_logs(job_id)), nl=False)


@cluster_app.command("status")
def cluster_status(job_id: Annotated[str | None, typer.Argument()] = None, address: AddressOption = None) -> None:
    """One job's status, or every job's (id, status, stage, entrypoint)."""
    client = _jobs_client("cluster status", address)
    if job_id:
        typer.echo(_answer("cluster status", lambda: client.get_job_status(job_id)).value)
        return
    for job in _answer("cluster status", client.list_jobs):
        typer.echo(f"{job.submission_id or job.job_id}\t{job.status.value}\t"
                   f"{(job.metadata or {}).get('mlscale.stage', '-')}\t{job.entrypoint}")


@cluster_app.command("stop")
def cluster_stop(job_id: str, address: AddressOption = None) -> None:
    """Stop a running job (a train job resumes from its checkpoint when submitted again)."""
    client = _jobs_client("cluster stop", address)
    stopped = _answer("cluster stop", lambda: client.stop_job(job_id))
    typer.echo(f"{job_id}: {'stopping' if stopped else 'not running'}")
