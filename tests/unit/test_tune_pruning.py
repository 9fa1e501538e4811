"""Trials ASHA stopped reach Optuna as PRUNED with their per-epoch values, complete ones as COMPLETE."""

import optuna
import pyarrow.fs as pafs

from mlscale.tune.sweep import PrunedMarkers, PruningAwareOptunaSearch


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)


def _searcher(tmp_path, metric="val_auc", mode="max"):
    markers = tmp_path / "pruned"
    markers.mkdir()
    search = PruningAwareOptunaSearch(space=_space, metric=metric, mode=mode, study_name="s",
                                      storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}"),
                                      pruned=PrunedMarkers(str(markers), pafs.LocalFileSystem()))
    return search, markers


def _run(search, trial_id, values):
    search.suggest(trial_id)
    for epoch, value in enumerate(values, 1):
        search.on_trial_result(trial_id, {"val_auc": value, "training_iteration": epoch, "epoch": epoch})
    search.on_trial_complete(trial_id, {"val_auc": values[-1], "epoch": len(values)})


def test_a_trial_asha_stopped_is_pruned_with_its_intermediate_values(tmp_path):
    search, markers = _searcher(tmp_path)
    (markers / "stopped").write_text('{"epoch": 1}')  # what RecordingASHA writes when it stops a trial
    _run(search, "stopped", [0.71])
    _run(search, "finished", [0.70, 0.80, 0.85])
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials}
    assert trials[0].state == optuna.trial.TrialState.PRUNED and trials[0].intermediate_values == {1: 0.71}
    # Optuna keeps the last intermediate value on a pruned trial, but TPE ranks PRUNED trials below every
    # COMPLETE one (by the step they reached, then that value): an epoch-1 AUC is no longer read as a final one
    assert trials[1].state == optuna.trial.TrialState.COMPLETE and trials[1].value == 0.85


def test_failed_trials_stay_failed_and_a_second_completion_is_ignored(tmp_path):
    search, markers = _searcher(tmp_path)
    (markers / "broken").write_text("{}")
    search.suggest("broken")
    search.on_trial_complete("broken", None, error=True)
    search.on_trial_complete("broken", {"val_auc": 0.9})  # told once only
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials
    assert trial.state == optuna.trial.TrialState.FAIL
