"""Entry points shared by the `mlscale` CLI and the jobs/ scripts: run one stage by name, print its summary for
people (a table) and machines (one JSON line), and turn an MlscaleError into its message and documented exit code
(mlscale.errors) instead of a traceback."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlscale.config import PipelineConfig, load_config, parse_overrides
from mlscale.cost import metered
from mlscale.data.prepare import load_prepared
from mlscale.errors import MlscaleError, PromotionError
from mlscale.logs import configure_logging, summary_line
from mlscale.pipeline import run_pipeline
from mlscale.stages.common import start
from mlscale.stages.deploy import deploy_stage, served_vs_batch
from mlscale.stages.prepare import prepare_stage
from mlscale.stages.train import train_stage


def prepare_summary(config: PipelineConfig) -> dict[str, Any]:
    start(config)
    return prepare_stage(config).summary()


def train_summary(config: PipelineConfig) -> dict[str, Any]:
    start(config)
    return train_stage(config, run_name=config.train.run_name).summary()


def tune_summary(config: PipelineConfig) -> dict[str, Any]:
    from mlscale.stages.tune import tune_stage

    start(config)
    return tune_stage(config).summary()


def deploy_summary(config: PipelineConfig, model_uri: str | None = None, check: bool = True) -> dict[str, Any]:
    start(config)
    model_uri = model_uri or config.serving_uri
    endpoint = deploy_stage(config, model_uri)
    summary: dict[str, Any] = {"model_uri": model_uri, "endpoint": endpoint}
    if check and config.serve.graph is None:  # a graph's answers are not one model's batch scores
        result = served_vs_batch(config, load_prepared(config), model_uri, endpoint)
        summary.update(served_vs_batch_rows=result.rows, served_vs_batch_max_abs_diff=result.max_abs_diff,
                       served_vs_batch_max_rel_diff=result.max_rel_diff)
    return summary


def score_summary(config: PipelineConfig, model_uri: str | None = None, force: bool = False) -> dict[str, Any]:
    from mlscale.stages.score import score_stage

    start(config)
    return score_stage(config, model_uri, force).summary()


def canary_summary(config: PipelineConfig, challenger: str = "challenger") -> dict[str, Any]:
    from mlscale.stages.release import canary_stage

    start(config)
    return canary_stage(config, challenger).summary()


def monitor_summary(config: PipelineConfig, model_uri: str | None = None) -> dict[str, Any]:
    from mlscale.stages.monitor import monitor_stage

    start(config)
    return monitor_stage(config, model_uri).summary()


def retrain_summary(config: PipelineConfig) -> dict[str, Any]:
    from mlscale.retrain import retrain_stage

    return retrain_stage(config).summary()


def replay_summary(config: PipelineConfig) -> dict[str, Any]:
    from mlscale.replay import replay_stage

    return replay_stage(config).summary()


def pipeline_summary(config: PipelineConfig) -> dict[str, Any]:
    result = run_pipeline(config)
    report = config.storage.root_path / "reports" / f"{config.name}-pipeline.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.to_json())
    return {**result.summary(), "report": str(report)}


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": prepare_summary,
    "train": train_summary,
    "tune": tune_summary,
    "deploy": deploy_summary,
    "score": score_summary,
    "canary": canary_summary,
    "monitor": monitor_summary,
    "retrain": retrain_summary,
    "replay": replay_summary,
    "pipeline": pipeline_summary,
}


def run_stage(stage: str, config: PipelineConfig, **kwargs: Any) -> dict[str, Any]:
    """One stage by name, its summary with what it cost (wall, driver CPU, the cluster's reserved CPU/GPU
    seconds: mlscale.cost) under `cost`."""
    with metered() as cost:
        summary = STAGES[stage](config, **kwargs)
    return {**summary, "cost": cost.to_dict()}


def print_summary(title: str, summary: dict[str, Any], console: Console | None = None) -> None:
    """A two-column table for people, then one JSON line for machines (job logs are parsed by tests)."""
    console = console or Console()
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        shown = f"{value:.6g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else value
        table.add_row(key, str(shown))
    console.print(table)
    print(summary_line(summary), flush=True)


def failed_checks(summary: dict[str, Any]) -> MlscaleError | None:
    """A stage that finished but whose new model failed its behavioural checks: the version stays registered as
    challenger and is not promoted, and the command exits with the promotion code (6) so a scheduler notices."""
    if summary.get("behaviour_passed") is False and not summary.get("promoted"):  # `always` forces it through
        return PromotionError(f"version {summary.get('model_version')} failed its behavioural checks and was not "
                              f"promoted ({summary.get('promotion', '')})")
    if summary.get("action") == "rollback":  # a canary that failed on live traffic: the champion serves again
        return PromotionError(f"canary v{summary.get('challenger_version')} was rolled back: "
                              f"{'; '.join(summary.get('reasons', []))}")
    return None


def report_error(stage: str, error: MlscaleError, debug: bool = False) -> int:
    """Print an mlscale error as its message (the traceback too with debug) and return its exit code."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"mlscale {stage} failed ({type(error).__name__}): {error}", file=sys.stderr, flush=True)
    return error.exit_code


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of the jobs/ scripts: parse --config and --set, run one stage, print its summary.

    Returns:
        0, or the exit code of the MlscaleError that stopped the stage (see mlscale.errors).
    """
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"Run the mlscale {stage} stage.")
    parser.add_argument("--config", help="pipeline config YAML (default: the built-in example)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--summary-json", help="also write the summary to this file")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    args = parser.parse_args(argv)
    configure_logging()
    if threading.current_thread() is threading.main_thread():  # `ray job stop` sends SIGTERM: unwind (a canary
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # ends) instead of vanishing
    try:
        config = load_config(args.config, parse_overrides(args.set))
        summary = run_stage(stage, config)
    except MlscaleError as error:
        return report_error(stage, error, args.debug)
    print_summary(f"mlscale {stage}", summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str))
    failure = failed_checks(summary)
    return report_error(stage, failure) if failure else 0


if __name__ == "__main__":  # `python -m mlscale.entry <stage> --set ...`: what a submitted job runs without jobs/
    sys.exit(job_main(sys.argv[1], sys.argv[2:]))
