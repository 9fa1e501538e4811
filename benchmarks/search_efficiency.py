"""Is the search worth it: mlscale's TPE + ASHA against random search and against Optuna alone, same budget.

All three search mlscale's default space (`SearchSpace()`: learning rate, batch size, weight decay, dropout, and the
MLP / residual-MLP architectures with their own widths and depths) on the real 2013 flights (a small deterministic
sample, so 5 seeds fit the default run), with trials of up to `epochs` (9) epochs:
- random search: mlscale's sweep, random sampler, no early stopping, `trials` trials. Budget B = trials x epochs
  trial-epochs;
- TPE + ASHA: mlscale's sweep (grace 1 epoch, reduction 3; trials ASHA stops reach Optuna as PRUNED), a
  trial-epoch budget of B; trials train in their own Tune process (`tune.trial_workers: 0`), two at a time;
- Optuna alone: what a user would write instead, no Ray: an Optuna study (the same TPE settings, HyperbandPruner
  with min 1, max `epochs`, reduction 3) over the same space, each trial a plain PyTorch loop (plain_torch.py) on
  the same featurized data, one trial at a time with PyTorch's threads, until it has spent B trial-epochs.

Headlines: the share of B that TPE + ASHA needs before its best validation AUC reaches random search's final best
(per seed against the random run of the same seed; mean over seeds; never reached counts as 1);
`best_vs_optuna_alone`, mlscale's final best over Optuna alone's (mean over seeds), and
`wallclock_ratio_vs_optuna_alone`, mlscale's wall time over Optuna alone's (total over seeds; below 1, mlscale is
faster), and beside it `wallclock_ratio_floor`, the ratio parallel trials would reach here with no overhead at all.

    python benchmarks/search_efficiency.py            # 5 seeds, ~5 minutes on 2 cores
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import mlflow  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from plain_torch import Tensors, load_tensors, train_epochs, val_auc  # noqa: E402

from mlscale.config import PipelineConfig, SearchSpace, load_config  # noqa: E402
from mlscale.data.prepare import prepare  # noqa: E402
from mlscale.features.featureset import FittedFeatures  # noqa: E402
from mlscale.features.label import label_spec, target_stats  # noqa: E402
from mlscale.models.networks import spec_for_features  # noqa: E402
from mlscale.plots import budget_curves  # noqa: E402
from mlscale.stages.common import start  # noqa: E402
from mlscale.train.inputs import training_data  # noqa: E402
from mlscale.tune.analysis import Report, budget_curve, budget_to_reach  # noqa: E402
from mlscale.tune.space import DefineByRun, apply_params  # noqa: E402
from mlscale.tune.sweep import run_sweep  # noqa: E402
from mlscale.tune.trial import SweepContext, TrialInputs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SEED_OFFSET = {"tpe_asha": 1000, "random": 0, "optuna_alone": 1000}  # Optuna alone starts where TPE + ASHA does
METHODS = {"tpe_asha": {"tune.sampler": "tpe", "tune.scheduler.name": "asha"},
           "random": {"tune.sampler": "random", "tune.scheduler.name": "none"}}
GRACE, REDUCTION = 1, 3


def sweep_config(storage: Path, method: str, seed: int, trials: int, epochs: int,
                 sample_fraction: float) -> PipelineConfig:
    budget = trials * epochs
    config = load_config(REPO / "jobs" / "configs" / "flights-small.yaml", {
        "storage.root": str(storage), "tracking.uri": None, "tracking.experiment": "search-efficiency",
        "ray.num_cpus": 2 * (os.cpu_count() or 2), "data.sample_fraction": sample_fraction,
        "train.epochs": epochs, "train.early_stopping.enabled": False, "train.max_failures": 0,
        # independent streams: TPE's start-up trials would otherwise be random search's first trials
        "tune.name": f"{method}-seed{seed}-{uuid.uuid4().hex[:6]}", "tune.seed": seed + SEED_OFFSET[method],
        "tune.trial_workers": 0,
        "tune.num_trials": trials if method == "random" else 10 * trials, "tune.epoch_budget": budget,
        "tune.time_budget_s": None, "tune.max_concurrent_trials": os.cpu_count() or 2,
        "tune.scheduler.grace_period": GRACE, "tune.scheduler.reduction_factor": REDUCTION,
        **METHODS.get(method, {}),
    })
    # the space a user gets from mlscale by default, not flights-small's one already narrowed to the good region
    return config.model_copy(update={"tune": config.tune.model_copy(update={"space": SearchSpace()})})


def run_method(config: PipelineConfig, inputs: TrialInputs) -> dict[str, Any]:
    began = time.perf_counter()
    with mlflow.start_run(run_name=config.tune.name) as run:
        context = SweepContext(config.tune.name, config.tracking_uri, run.info.experiment_id, run.info.run_id)
        sweep, _ = run_sweep(config, TrialInputs(config, inputs.features, inputs.train, inputs.val,
                                                 inputs.target_stats, context), config.tune.name)
    curve = budget_curve(sweep.reports, sweep.mode)
    return {"best": curve[-1][1], "spent": curve[-1][0], "curve": curve, "trials": len(sweep.trials),
            "counts": sweep.counts(), "seconds": round(time.perf_counter() - began, 1)}


def optuna_alone(config: PipelineConfig, features: FittedFeatures, train: Tensors, val: Tensors,
                 budget: int) -> dict[str, Any]:
    """An Optuna study with its own pruner over the same space, plain PyTorch trials, one at a time, no Ray."""
    began = time.perf_counter()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.tune.seed, n_startup_trials=config.tune.startup_trials,
                                           multivariate=True, group=True),
        pruner=optuna.pruners.HyperbandPruner(min_resource=GRACE, max_resource=config.train.epochs,
                                              reduction_factor=REDUCTION))
    define = DefineByRun(config.tune.space)
    spent, reports = 0, []
    while spent < budget:
        trial = study.ask()
        define(trial)
        trial_config = apply_params(config, trial.params)
        spec = spec_for_features(trial_config.train.model, features)
        state, value = optuna.trial.TrialState.COMPLETE, None
        epochs = train_epochs(trial_config, spec, train, seed=trial_config.train.seed)
        for epoch, (model, _) in enumerate(epochs, start=1):
            auc = val_auc(model, val)
            value = auc if value is None else max(value, auc)
            spent += 1
            reports.append(Report(time.perf_counter(), str(trial.number), float(epoch), auc))
            trial.report(auc, epoch)
            if trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
            if spent >= budget:
                state = optuna.trial.TrialState.FAIL  # cut by the budget: neither finished nor pruned
                break
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    curve = budget_curve(reports, "max")
    counts = {name.lower(): sum(t.state.name == name for t in study.trials) for name in ("COMPLETE", "PRUNED")}
    return {"best": curve[-1][1], "spent": curve[-1][0], "curve": curve, "trials": len(study.trials),
            "counts": counts, "seconds": round(time.perf_counter() - began, 1)}


def wallclock_ratio_floor(config: PipelineConfig, features: FittedFeatures, train: Tensors,
                          samples: int = 6) -> dict[str, float]:
    """The best wall-clock ratio parallel trials can reach on this machine, with no overhead at all.

    mlscale runs one trial per core with one thread each; Optuna alone runs one trial at a time on all the threads.
    For `samples` points drawn at random from the same space, one epoch of the plain loop is timed with one thread
    and with all: parallel trials would take (sum of 1-thread epoch times) / cores, Optuna alone the sum of the
    all-thread times. Below 1, parallel trials can win; near 1, one trial's threads already use every core.
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define, threads, cores = DefineByRun(config.tune.space), torch.get_num_threads(), os.cpu_count() or 1
    seconds = {1: 0.0, threads: 0.0}
    for _ in range(samples):
        trial = study.ask()
        define(trial)
        point = apply_params(config, trial.params)
        point = point.model_copy(update={"train": point.train.model_copy(update={"epochs": 2})})
        spec = spec_for_features(point.train.model, features)
        for count in seconds:
            torch.set_num_threads(count)
            rate = list(train_epochs(point, spec, train))[-1][1]  # the second epoch: warmed up
            seconds[count] += len(train) / rate
    torch.set_num_threads(threads)
    return {"epoch_seconds_1_thread": seconds[1], f"epoch_seconds_{threads}_threads": seconds[threads],
            "wallclock_ratio_floor": seconds[1] / cores / seconds[threads]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=6, help="random search's trials (budget = trials x epochs)")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a trial that is never stopped")
    parser.add_argument("--sample-fraction", type=float, default=0.03, help="of the 2013 flights")
    parser.add_argument("--name", default="search_efficiency", help="results/<name>.json and .png")
    args = parser.parse_args()
    seeds, trials, epochs = args.seeds, args.trials, args.epochs
    budget = trials * epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.perf_counter()
    methods = [*METHODS, "optuna_alone"]
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        base = sweep_config(storage, "random", 0, trials, epochs, args.sample_fraction)
        start(base)
        prepared = prepare(base)
        data = training_data(base, prepared)
        label = label_spec(base.data, prepared.read("train"))
        inputs = TrialInputs(base, data.features, data.train, data.val, target_stats(label),
                             SweepContext("", "", "", ""))
        tensors = {split: load_tensors(data.cache.directory / split, torch.device("cpu")) for split in ("train", "val")}
        print(f"data: {len(tensors['train']):,} training rows, {len(tensors['val']):,} validation rows; budget "
              f"{budget} trial-epochs per search", flush=True)
        floor = wallclock_ratio_floor(base, data.features, tensors["train"])
        runs = []
        for seed in range(seeds):
            for method in methods:
                config = sweep_config(storage, method, seed, trials, epochs, args.sample_fraction)
                outcome = (optuna_alone(config, data.features, tensors["train"], tensors["val"], budget)
                           if method == "optuna_alone" else run_method(config, inputs))
                runs.append({"method": method, "seed": seed, **outcome})
                print(f"seed {seed} {method:12s} best val_auc {outcome['best']:.4f} after {outcome['spent']:.0f} "
                      f"trial-epochs, {outcome['trials']} trials {outcome['counts']} ({outcome['seconds']} s)",
                      flush=True)
    rows = []
    for seed in range(seeds):
        run = {r["method"]: r for r in runs if r["seed"] == seed}
        row: dict[str, Any] = {"seed": seed, **{f"best_{m}": run[m]["best"] for m in methods},
                               **{f"seconds_{m}": run[m]["seconds"] for m in methods},
                               **{f"trials_{m}": run[m]["trials"] for m in methods}}
        for method in ("tpe_asha", "optuna_alone"):
            needed = budget_to_reach(run[method]["curve"], run["random"]["best"], "max")
            row[f"budget_to_match_random_{method}"] = needed
            row[f"fraction_{method}"] = min(needed / budget, 1.0) if needed is not None else 1.0
        rows.append(row)

    def mean(key: str) -> float:
        return sum(row[key] for row in rows) / seeds

    result = {
        "budget_fraction_to_match_random": mean("fraction_tpe_asha"),
        "best_vs_optuna_alone": sum(r["best_tpe_asha"] / r["best_optuna_alone"] for r in rows) / seeds,
        "wallclock_ratio_vs_optuna_alone": sum(r["seconds_tpe_asha"] for r in rows)
        / sum(r["seconds_optuna_alone"] for r in rows),
        "optuna_alone_budget_fraction_to_match_random": mean("fraction_optuna_alone"),
        **floor,
        **{f"best_{m}": mean(f"best_{m}") for m in methods},
        "best_difference_spread": max(r["best_tpe_asha"] - r["best_optuna_alone"] for r in rows)
        - min(r["best_tpe_asha"] - r["best_optuna_alone"] for r in rows),
        "budget_trial_epochs": budget, "seeds": seeds, "random_trials": trials, "max_epochs_per_trial": epochs,
        "grace_period": GRACE, "reduction_factor": REDUCTION, "sample_fraction": args.sample_fraction,
        "training_rows": len(tensors["train"]),
        "per_seed": rows,
        "curves": {method: [r["curve"] for r in runs if r["method"] == method] for method in methods},
        "seconds": round(time.perf_counter() - began, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": date.today().isoformat(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    budget_curves(result["curves"], RESULTS / f"{args.name}.png", "val_auc",
                  f"best val AUC against budget ({seeds} seeds, budget {budget} trial-epochs)")
    print(f"\n{'seed':>4} {'TPE+ASHA':>9} {'random':>8} {'Optuna':>8} {'trials T/R/O':>13} {'TPE budget to match':>20}"
          f" {'seconds T/O':>12}")
    for row in rows:
        needed = row["budget_to_match_random_tpe_asha"]
        shown = f"{needed:.0f}/{budget} = {row['fraction_tpe_asha']:.2f}" if needed is not None else "not reached"
        trials_shown = f"{row['trials_tpe_asha']}/{row['trials_random']}/{row['trials_optuna_alone']}"
        print(f"{row['seed']:>4} {row['best_tpe_asha']:>9.4f} {row['best_random']:>8.4f} "
              f"{row['best_optuna_alone']:>8.4f} {trials_shown:>13} {shown:>20} "
              f"{row['seconds_tpe_asha']:>5.0f}/{row['seconds_optuna_alone']:<5.0f}")
    print(f"mean {result['best_tpe_asha']:>9.4f} {result['best_random']:>8.4f} {result['best_optuna_alone']:>8.4f}"
          f"   ({result['seconds']:.0f} s in all)")
    print(f"Optuna alone needs {result['optuna_alone_budget_fraction_to_match_random']:.2f} of the budget to reach "
          f"random search's final best")
    print(f"mlscale TPE+ASHA best / Optuna alone best: {result['best_vs_optuna_alone']:.4f} (spread of the per-seed "
          f"difference {result['best_difference_spread']:.4f})")
    print(f"mlscale TPE+ASHA wall clock / Optuna alone: {result['wallclock_ratio_vs_optuna_alone']:.2f}x (with no "
          f"overhead at all, parallel trials on this machine's {os.cpu_count()} cores would reach "
          f"{result['wallclock_ratio_floor']:.2f}x)")
    print(f"TPE+ASHA needs {result['budget_fraction_to_match_random']:.2f} of the budget to reach random search's "
          f"final best (target <= 0.33)")


if __name__ == "__main__":
    main()
