"""Is the search worth it: TPE + ASHA against random search without early stopping, same trial-epoch budget.

Both run mlscale's own sweep (`mlscale.tune.sweep.run_sweep`) on the real 2013 flights (the small config's 10%
sample), over the same conditional space (hyperparameters plus MLP / residual-MLP architectures), for several seeds.
Random search runs `trials` trials of `epochs` epochs each: budget B = trials x epochs trial-epochs. TPE + ASHA gets
the same B as a trial-epoch budget; pruned trials cost only the epochs they ran, so it tries more configurations.
Trials train inside their own Tune process (`tune.trial_workers: 0`): the models are small and a Ray Train worker
group per trial would spend the budget on start-up.

The headline: the share of B that TPE + ASHA needs before its best validation AUC reaches random search's final
best (per seed, against the random run of the same seed; mean over seeds; a seed that never gets there counts as 1).

    python benchmarks/search_efficiency.py            # 3 seeds, ~8 minutes on 2 cores
    python benchmarks/search_efficiency.py --full     # 5 seeds, twice the budget
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import mlflow  # noqa: E402
import optuna  # noqa: E402

from mlscale.config import PipelineConfig, load_config  # noqa: E402
from mlscale.data.prepare import prepare  # noqa: E402
from mlscale.features.label import label_spec, target_stats  # noqa: E402
from mlscale.plots import budget_curves  # noqa: E402
from mlscale.stages.common import start  # noqa: E402
from mlscale.train.inputs import training_data  # noqa: E402
from mlscale.tune.analysis import budget_curve, budget_to_reach  # noqa: E402
from mlscale.tune.sweep import run_sweep  # noqa: E402
from mlscale.tune.trial import SweepContext, TrialInputs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SEED_OFFSET = {"tpe_asha": 1000, "random": 0}
METHODS = {"tpe_asha": {"tune.sampler": "tpe", "tune.scheduler.name": "asha"},
           "random": {"tune.sampler": "random", "tune.scheduler.name": "none"}}


def sweep_config(storage: Path, method: str, seed: int, trials: int, epochs: int) -> PipelineConfig:
    budget = trials * epochs
    return load_config(REPO / "jobs" / "configs" / "flights-small.yaml", {
        "storage.root": str(storage), "tracking.uri": None, "tracking.experiment": "search-efficiency",
        "ray.num_cpus": 2 * (os.cpu_count() or 2),
        "train.epochs": epochs, "train.early_stopping.enabled": False, "train.max_failures": 0,
        # independent streams: TPE's start-up trials would otherwise be random search's first trials
        "tune.name": f"{method}-seed{seed}-{uuid.uuid4().hex[:6]}", "tune.seed": seed + SEED_OFFSET[method],
        "tune.trial_workers": 0,
        "tune.num_trials": trials if method == "random" else 10 * trials, "tune.epoch_budget": budget,
        "tune.time_budget_s": None, "tune.max_concurrent_trials": 2,
        "tune.scheduler.grace_period": 1, "tune.scheduler.reduction_factor": 3,
        **METHODS[method],
    })


def run_method(storage: Path, method: str, seed: int, trials: int, epochs: int, inputs: TrialInputs) -> dict:
    config = sweep_config(storage, method, seed, trials, epochs)
    began = time.perf_counter()
    with mlflow.start_run(run_name=config.tune.name) as run:
        context = SweepContext(config.tune.name, config.tracking_uri, run.info.experiment_id, run.info.run_id)
        sweep, _ = run_sweep(config, TrialInputs(config, inputs.features, inputs.train, inputs.val,
                                                 inputs.target_stats, context), config.tune.name)
    curve = budget_curve(sweep.reports, sweep.mode)
    return {"method": method, "seed": seed, "best": curve[-1][1], "spent": curve[-1][0], "curve": curve,
            "trials": len(sweep.trials), "counts": sweep.counts(), "seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="5 seeds and twice the budget")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None, help="random search's trials (budget = trials x epochs)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of a trial that is never stopped")
    parser.add_argument("--name", default=None, help="results/<name>.json and .png (default: search_efficiency, "
                                                     "search_efficiency_full with --full)")
    args = parser.parse_args()
    seeds = args.seeds or (5 if args.full else 3)
    trials = args.trials or (12 if args.full else 6)
    budget = trials * args.epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        base = sweep_config(storage, "random", 0, trials, args.epochs)
        start(base)
        prepared = prepare(base)
        data = training_data(base, prepared)
        label = label_spec(base.data, prepared.read("train"))
        inputs = TrialInputs(base, data.features, data.train, data.val, target_stats(label),
                             SweepContext("", "", "", ""))
        runs = []
        for seed in range(seeds):
            for method in METHODS:
                runs.append(run_method(storage, method, seed, trials, args.epochs, inputs))
                print(f"seed {seed} {method:9s} best val_auc {runs[-1]['best']:.4f} after {runs[-1]['spent']:.0f} "
                      f"trial-epochs, {runs[-1]['trials']} trials {runs[-1]['counts']} ({runs[-1]['seconds']} s)",
                      flush=True)
    rows, fractions = [], []
    for seed in range(seeds):
        tpe = next(r for r in runs if r["seed"] == seed and r["method"] == "tpe_asha")
        rnd = next(r for r in runs if r["seed"] == seed and r["method"] == "random")
        needed = budget_to_reach(tpe["curve"], rnd["best"], "max")
        fraction = needed / budget if needed is not None else None
        fractions.append(min(fraction, 1.0) if fraction is not None else 1.0)
        rows.append({"seed": seed, "best_tpe_asha": tpe["best"], "best_random": rnd["best"],
                     "tpe_asha_trials": tpe["trials"], "random_trials": rnd["trials"],
                     "budget_to_match_random": needed, "fraction": fraction})
    mean = sum(fractions) / len(fractions)
    result = {
        "budget_fraction_to_match_random": mean,
        "best_tpe_asha": sum(r["best_tpe_asha"] for r in rows) / seeds,
        "best_random": sum(r["best_random"] for r in rows) / seeds,
        "budget_trial_epochs": budget, "seeds": seeds, "random_trials": trials, "epochs_per_trial": args.epochs,
        "per_seed": rows,
        "curves": {method: [r["curve"] for r in runs if r["method"] == method] for method in METHODS},
        "seconds": round(time.perf_counter() - began, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": date.today().isoformat(),
    }
    name = args.name or ("search_efficiency_full" if args.full else "search_efficiency")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    budget_curves(result["curves"], RESULTS / f"{name}.png", "val_auc",
                  f"best val AUC against budget ({seeds} seeds, budget {budget} trial-epochs)")
    print(f"\n{'seed':>4} {'TPE+ASHA best':>14} {'random best':>12} {'TPE trials':>10} {'random trials':>13} "
          f"{'TPE budget to match':>20}")
    for row in rows:
        shown = f"{row['budget_to_match_random']:.0f}/{budget} = {row['fraction']:.2f}" if row["fraction"] is not None \
            else "not reached"
        print(f"{row['seed']:>4} {row['best_tpe_asha']:>14.4f} {row['best_random']:>12.4f} "
              f"{row['tpe_asha_trials']:>10} {row['random_trials']:>13} {shown:>20}")
    print(f"mean {result['best_tpe_asha']:>14.4f} {result['best_random']:>12.4f}   ({result['seconds']:.0f} s)")
    print(f"TPE+ASHA needs {mean:.2f} of the budget to reach random search's final best (target <= 0.33)")


if __name__ == "__main__":
    main()
