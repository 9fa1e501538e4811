"""The search space, the trial resource plan and the reading of results: plain functions, no Ray."""

import optuna
import pyarrow.fs as pafs
import pytest

from mlscale.config import load_config
from mlscale.errors import ConfigError
from mlscale.train.trainer import loop_config
from mlscale.tune.analysis import Report, TrialRecord, budget_curve, budget_to_reach, pareto_front, pick_winner
from mlscale.tune.resources import plan_trials
from mlscale.tune.space import DefineByRun, apply_params, architecture_of, overrides_from_params
from mlscale.tune.trial import sized_for_trial
from tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)
ALL_FAMILIES = {"tune.space.architecture.families": ["mlp", "resmlp", "ft_transformer"]}


def small(**overrides):
    return load_config(REPO / "jobs" / "configs" / "flights-small.yaml", overrides)


def sampled(config, n: int = 60, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    define = DefineByRun(config.tune.space)
    for _ in range(n):
        trial = study.ask()
        define(trial)
        study.tell(trial, 0.5)
    return study.trials


def test_architecture_parameters_exist_only_where_the_architecture_has_them():
    config = small(**ALL_FAMILIES)
    families = set()
    for trial in sampled(config):
        params = trial.params
        family = params["arch.family"]
        families.add(family)
        other = {name for name in params if name.startswith("arch.") and name != "arch.family"
                 and not name.startswith(f"arch.{family}.")}
        assert not other, f"{family} trial sampled another family's parameters: {other}"
        chosen = apply_params(config, params).train.model
        assert chosen.family == family
        if family == "mlp":
            widths = sorted(name for name in params if name.startswith("arch.mlp.width_"))
            assert widths == [f"arch.mlp.width_{i}" for i in range(params["arch.mlp.layers"])]
            assert chosen.hidden == [params[name] for name in widths]
            assert all(16 <= w <= 128 for w in chosen.hidden)
        elif family == "ft_transformer":
            assert chosen.d_token % chosen.heads == 0
    assert families == {"mlp", "resmlp", "ft_transformer"}


def test_hyperparameters_land_in_the_fields_they_name_on_their_scales():
    config = small()
    trials = sampled(config, 40)
    for trial in trials:
        chosen = apply_params(config, trial.params)
        assert chosen.train.optimizer.lr == trial.params["train.optimizer.lr"]
        assert 0.0005 <= chosen.train.optimizer.lr <= 0.02
        assert chosen.train.batch_size in (64, 128, 256)
    learning_rates = sorted(t.params["train.optimizer.lr"] for t in trials)
    below_geometric_middle = sum(lr < (0.0005 * 0.02) ** 0.5 for lr in learning_rates)
    assert 10 <= below_geometric_middle <= 30  # log scale: about half below the geometric middle


def test_the_same_seed_samples_the_same_points():
    config = small()
    assert [t.params for t in sampled(config, 8, seed=3)] == [t.params for t in sampled(config, 8, seed=3)]
    assert [t.params for t in sampled(config, 8, seed=3)] != [t.params for t in sampled(config, 8, seed=4)]


def test_overrides_and_recorded_architecture():
    params = {"train.optimizer.lr": 0.01, "arch.family": "ft_transformer", "arch.ft_transformer.layers": 2,
              "arch.ft_transformer.d_token": 16, "arch.ft_transformer.heads_d16": 4}
    assert overrides_from_params(params) == {"train.optimizer.lr": 0.01, "train.model.family": "ft_transformer",
                                             "train.model.layers": 2, "train.model.d_token": 16,
                                             "train.model.heads": 4}
    chosen = apply_params(small(), params)
    assert architecture_of(chosen) == {"family": "ft_transformer", "d_token": 16, "heads": 4, "layers": 2,
                                       "dropout": chosen.train.model.dropout, "embedding_cap": 16}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tune.space.params": {"train.optimizer.lrate": {"low": 0.1, "high": 1}}}, "'train.optimizer.lrate' is not"),
    ({"tune.space.params": {"train.optimizer.lr": {"low": 0.1, "high": 0.01}}}, "low (0.1) is above high (0.01)"),
    ({"tune.space.params": {"train.optimizer.lr": {"low": 0, "high": 1, "log": True}}}, "log scale needs low > 0"),
    ({"tune.space.params": {"train.optimizer.lr": {"low": 0.1}}}, "needs choices, or both low and high"),
    ({"tune.space.architecture.ft_transformer": {"d_token": [6], "heads": [4]}}, "divides d_token 6"),
    ({"tune.scheduler.reduction_factor": 1}, "tune.scheduler.reduction_factor"),
])
def test_bad_search_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as error:
        small(**overrides)
    assert message in str(error.value)


def test_a_sampled_value_the_config_rejects_names_the_field():
    with pytest.raises(ConfigError, match=r"train.batch_size.*greater than or equal to 1"):
        apply_params(small(), {"train.batch_size": 0})


def test_trial_plan_keeps_cpus_for_data_and_fits_whole_trials():
    config = small()  # one Ray Train worker per trial, 0.1 CPU for its driver, 1 CPU kept for Ray Data
    plan = plan_trials(config, {"CPU": 4.0})
    assert plan.per_trial == {"CPU": pytest.approx(1.1)} and plan.max_concurrent == 2
    in_process = plan_trials(small(**{"tune.trial_workers": 0}), {"CPU": 4.0})
    assert in_process.driver == {"CPU": 1.0} and in_process.workers == {} and in_process.max_concurrent == 3
    assert plan_trials(small(**{"tune.max_concurrent_trials": 1}), {"CPU": 16.0}).max_concurrent == 1
    assert plan_trials(config, {"CPU": 64.0}).max_concurrent == config.tune.num_trials  # never more than trials
    gpus = plan_trials(small(**{"train.use_gpu": True, "tune.trial_workers": 2}), {"CPU": 32.0, "GPU": 4.0})
    assert gpus.workers == {"CPU": 2.0, "GPU": 2.0} and gpus.max_concurrent == 2


@pytest.mark.parametrize("trial_workers, steps", [(0, 100), (1, 100), (4, 25)])
def test_a_trial_schedules_its_learning_rate_for_the_workers_it_really_has(trial_workers, steps):
    config = small(**{"train.num_workers": 2, "train.batch_size": 64, "tune.trial_workers": trial_workers})
    loop = loop_config(sized_for_trial(config), {"n_numeric": 3, "cardinalities": [5]}, 6_400, None,
                       pafs.LocalFileSystem(), "/tmp/unused", None)
    assert loop.steps_per_epoch == steps  # 6,400 rows / batch 64 / the trial's workers, not the sweep's 2


def test_a_trial_that_can_never_fit_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"tune.trial_workers=2 x train.cpus_per_worker=1.0.*tune.data_cpus=1.0"):
        plan_trials(small(**{"tune.trial_workers": 2}), {"CPU": 2.0})


def record(trial_id: str, value: float | None, params: float = 0.0, outcome: str = "completed") -> TrialRecord:
    return TrialRecord(trial_id, {}, outcome, 2.0, value, cost={"params": params})


def test_pareto_front_keeps_only_undominated_trials():
    records = [record("a", 0.80, 100), record("b", 0.85, 1000), record("c", 0.84, 5000),  # c: b is better, cheaper
               record("d", 0.90, 9000), record("e", 0.80, 200), record("f", None, 10)]
    assert [r.trial_id for r in pareto_front(records, "params", "max")] == ["a", "b", "d"]
    assert [r.trial_id for r in pareto_front(records, "params", "min")] == ["a"]


def test_winner_is_the_best_metric_under_the_cost_ceiling():
    records = [record("a", 0.80, 100), record("b", 0.85, 1000), record("d", 0.90, 9000),
               record("x", 0.95, 10, outcome="failed")]
    assert pick_winner(records, "max").trial_id == "d"
    assert pick_winner(records, "max", "params", 5000).trial_id == "b"
    assert pick_winner(records, "min").trial_id == "a"
    assert pick_winner([record("f", None)], "max") is None


def test_budget_curve_counts_each_trial_epoch_once_in_time_order():
    reports = [Report(1.0, "a", 1, 0.70), Report(2.0, "b", 1, 0.75), Report(3.0, "a", 2, 0.80),
               Report(4.0, "c", 1, 0.60), Report(5.0, "a", 2, 0.80)]  # a restored trial re-reporting epoch 2
    curve = budget_curve(reports, "max")
    assert curve == [(1.0, 0.70), (2.0, 0.75), (3.0, 0.80), (4.0, 0.80), (4.0, 0.80)]
    assert budget_to_reach(curve, 0.75, "max") == 2.0
    assert budget_to_reach(curve, 0.81, "max") is None
    assert budget_to_reach(budget_curve(reports, "min"), 0.60, "min") == 4.0


def test_epoch_budget_counts_each_trials_furthest_epoch():
    from mlscale.tune.sweep import EpochBudget

    stopper = EpochBudget(5)
    assert stopper("a", {"epoch": 1.0}) is False and not stopper.stop_all()
    stopper("a", {"epoch": 2.0})
    stopper("b", {"epoch": 1.0})
    stopper("a", {"epoch": 2.0})  # a restored trial reporting again costs nothing more
    assert not stopper.stop_all()
    stopper("c", {"epoch": 2.0})
    assert stopper.stop_all()
