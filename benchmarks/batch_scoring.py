"""Batch inference at growing scale: `mlscale score` (streaming through Ray Data) against the usual single-process
scorer (read the rows, validate, predict, write, all in memory), in one run.

A model is trained here on the flights sample (one epoch, mlscale's own stages); then the synthetic flights source
(1% bad rows) is scored at 1x, 4x and 16x a base size, each on a fresh embedded Ray whose object store is far smaller
than the largest run. A sampler records the memory (PSS, so shared object-store pages count once) of every process.
The baseline scores the largest size in one process with the same kernels (generate, validate, Bundle.predict_columns)
holding the whole table, as a script written against pandas/pyarrow would.

    python benchmarks/batch_scoring.py                     # 1x = 200k rows (~6 min on 2 cores)
    python benchmarks/batch_scoring.py --base-rows 50000   # a quick look

Writes benchmarks/results/batch_scoring.json (memory_ratio_16x, baseline_memory_ratio_16x, rows_per_s_per_core,
throughput_ratio_vs_baseline, and every run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

from benchmarks.data_pipeline import MemorySampler  # noqa: E402
from mlscale.cluster.connect import configure_data, set_process_env  # noqa: E402
from mlscale.config import PipelineConfig, RayConfig, load_config  # noqa: E402

SCALES = (1, 4, 16)
RESULTS = REPO / "benchmarks" / "results"


def trained_model(root: Path) -> tuple[PipelineConfig, str]:
    """The flights sample prepared and trained for one epoch; returns the config and the version's URI."""
    from mlscale.stages.common import start
    from mlscale.stages.prepare import prepare_stage
    from mlscale.stages.train import train_stage

    config = load_config("flights-small", {"storage.root": str(root), "tracking.uri": None, "train.epochs": 1,
                                           "ray.include_dashboard": False})
    start(config)
    trained = train_stage(config, prepare_stage(config))
    return config, trained.version_uri


def scoring_config(config: PipelineConfig, rows: int, output: Path) -> PipelineConfig:
    return config.model_copy(update={
        "data": config.data.model_copy(update={"source": "synthetic", "synthetic": config.data.synthetic.model_copy(
            update={"rows": rows, "seed": 11, "bad_fraction": 0.01})}),
        "validation": config.validation.model_copy(update={"unique": None}),
        "score": config.score.model_copy(update={"output": str(output), "columns": ["flight", "tailnum"]})})


def run_mlscale(config: PipelineConfig, model_uri: str, rows: int, root: Path) -> dict:
    from mlscale.scoring import score_source

    with MemorySampler() as memory:
        began = time.perf_counter()
        scored = score_source(scoring_config(config, rows, root / f"scores-{rows}"), model_uri, force=True)
        seconds = time.perf_counter() - began
    assert sum(scored.counts.values()) == rows
    return {"system": "mlscale score", "rows": rows, "seconds": seconds, "peak_memory_bytes": memory.peak,
            "scored": scored.counts["scored"], "quarantined": scored.counts["quarantine"]}


def run_baseline(config: PipelineConfig, model_uri: str, rows: int, root: Path) -> dict:
    """One process, the whole table in memory: generate, validate, predict the valid rows, write."""
    from mlscale.data.synthetic import ROWS_PER_BLOCK, generate_table
    from mlscale.data.validation import RULES_COLUMN, build_rules, validate_batch
    from mlscale.registry.store import load_bundle
    from mlscale.scoring import kept_columns, scoring_specs, scoring_validation

    pa.set_cpu_count(1)
    bundle = load_bundle(model_uri, config.tracking_uri)
    scoring = scoring_config(config, rows, root / "baseline")
    specs = scoring_specs(scoring, bundle, kept_columns(scoring, bundle))
    rules = build_rules(specs, scoring_validation(scoring, specs))
    with MemorySampler() as memory:
        began = time.perf_counter()
        table = pa.concat_tables(generate_table(np.arange(start, min(start + ROWS_PER_BLOCK, rows)), 11, 0.01)
                                 for start in range(0, rows, ROWS_PER_BLOCK))
        checked = validate_batch(table, specs, rules)
        valid = checked.filter(checked.column(RULES_COLUMN).is_null())
        predictions = bundle.predict_columns({name: valid.column(name) for name in bundle.input_columns})
        out = pa.table({"flight": valid.column("flight"), "prediction": predictions})
        pq.write_table(out, root / "baseline.parquet")
        seconds = time.perf_counter() - began
    return {"system": "single process", "rows": rows, "seconds": seconds, "peak_memory_bytes": memory.peak,
            "scored": out.num_rows, "quarantined": rows - out.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-rows", type=int, default=200_000)
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    import ray

    set_process_env()
    root = Path(tempfile.mkdtemp(prefix="mlscale-score-bench-"))
    runs: list[dict] = []
    try:
        print("training the model to score with ...", flush=True)
        config, model_uri = trained_model(root)
        ray.shutdown()
        for scale in SCALES:  # a fresh Ray per size, so each peak is that size's own
            ray.init(num_cpus=args.cpus, object_store_memory=args.object_store_mb * 2**20, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
            configure_data(RayConfig())
            try:
                runs.append(run_mlscale(config, model_uri, args.base_rows * scale, root))
            finally:
                ray.shutdown()
            print(f"  mlscale score {scale}x: {runs[-1]['seconds']:.1f} s", flush=True)
        for scale in (1, SCALES[-1]):
            runs.append(run_baseline(config, model_uri, args.base_rows * scale, root))
            print(f"  single process {scale}x: {runs[-1]['seconds']:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    ours = [run for run in runs if run["system"] == "mlscale score"]
    theirs = [run for run in runs if run["system"] == "single process"]
    for run in runs:
        run["rows_per_s"] = run["rows"] / run["seconds"]
        run["rows_per_s_per_core"] = run["rows_per_s"] / (args.cpus if run["system"] == "mlscale score" else 1)
    result = {
        "memory_ratio_16x": ours[-1]["peak_memory_bytes"] / ours[0]["peak_memory_bytes"],
        "baseline_memory_ratio_16x": theirs[-1]["peak_memory_bytes"] / theirs[0]["peak_memory_bytes"],
        "rows_per_s_per_core": ours[-1]["rows_per_s_per_core"],
        "baseline_rows_per_s_per_core": theirs[-1]["rows_per_s_per_core"],
        "throughput_ratio_vs_baseline": ours[-1]["rows_per_s_per_core"] / theirs[-1]["rows_per_s_per_core"],
        "object_store_memory_bytes": args.object_store_mb * 2**20, "runs": runs,
        "machine": {"cpus": args.cpus, "platform": platform.platform(), "python": platform.python_version()},
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_scoring.json").write_text(json.dumps(result, indent=2))
    print(f"{'run':<16}{'rows':>12}{'seconds':>10}{'rows/s/core':>13}{'peak MiB':>10}{'quarantined':>13}")
    for run in runs:
        print(f"{run['system']:<16}{run['rows']:>12,}{run['seconds']:>10.1f}{run['rows_per_s_per_core']:>13,.0f}"
              f"{run['peak_memory_bytes'] / 2**20:>10.0f}{run['quarantined']:>13,}")
    print(f"peak memory 16x / 1x: mlscale {result['memory_ratio_16x']:.2f}, single process "
          f"{result['baseline_memory_ratio_16x']:.2f}")
    print(f"memory_ratio_16x (mlscale score, streaming): {result['memory_ratio_16x']:.2f}")


if __name__ == "__main__":
    main()
