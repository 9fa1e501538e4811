"""The retraining decision as a pure function (triggers, cool-down, cap, labels, a window never twice), the
decision log, the canary promotion policy, windows judged by an event-time column with labels and decay, and the
retrain job's command reproducing the config exactly."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from mlscale.config import MonitorConfig, RetrainConfig, load_config, parse_overrides
from mlscale.monitor.retrain import DecisionLog, decide_retrain
from mlscale.monitor.windows import Decay, WindowDrift, judge_windows
from mlscale.promotion import Measurement, decide

NOW = datetime(2013, 9, 1, 12, tzinfo=UTC)
POLICY = RetrainConfig(enabled=True, train_windows=2, val_windows=1, test_windows=1, cooldown_s=3600,
                       max_per_day=2)


def windows(drifted_last: bool = True, decayed_last: bool = False, labelled: int = 6) -> list[WindowDrift]:
    made = []
    for month in range(1, 8):
        window = WindowDrift(start=str(month), key=month, rows=500, versions={"1": 500}, overall=0.05)
        if month <= labelled:
            window.performance, window.labelled_rows = {"live_auc": 0.7, "live_rows": 400.0}, 400
            window.decayed = decayed_last and month == labelled
        made.append(window)
    made[-1].overall, made[-1].drifted, made[-1].drifted_features = 0.4, drifted_last, ["temp"]
    return made


def test_drift_on_the_newest_window_starts_a_retrain_on_the_newest_labelled_windows():
    decision = decide_retrain(windows(), [], POLICY, NOW, champion="1")
    assert decision.trigger and decision.start and decision.held_back is None
    assert "drift 0.400 in window 7 (temp)" in decision.reasons[0]
    assert (decision.train, decision.val, decision.test) == ([3, 4], [5], [6])  # labels lag a window


def test_decay_triggers_too_and_only_what_the_policy_names_does():
    decayed = windows(drifted_last=False, decayed_last=True)
    assert decide_retrain(decayed, [], POLICY, NOW).reasons[0].startswith("decay in window 6")
    assert not decide_retrain(decayed, [], POLICY.model_copy(update={"on": ["drift"]}), NOW).trigger
    calm = decide_retrain(windows(drifted_last=False), [], POLICY, NOW)
    assert not calm.trigger and not calm.start and calm.reasons == ["no drift or decay in window 7"]


def test_cool_down_cap_labels_a_window_seen_before_and_the_switch_hold_a_trigger_back():
    started = {"event": "monitor", "start": True, "window": "6", "time": (NOW - timedelta(minutes=30)).isoformat()}
    assert "cool-down" in decide_retrain(windows(), [started], POLICY, NOW).held_back
    earlier = [{**started, "time": (NOW - timedelta(hours=h)).isoformat()} for h in (2, 5)]
    assert "cap: 2 retrains" in decide_retrain(windows(), earlier, POLICY, NOW).held_back
    assert decide_retrain(windows(), earlier[:1], POLICY, NOW).start
    same_window = {**started, "window": "7", "time": (NOW - timedelta(days=3)).isoformat()}
    assert "has triggered a retrain already" in decide_retrain(windows(), [same_window], POLICY, NOW).held_back
    assert "a retrain needs 4" in decide_retrain(windows(labelled=3), [], POLICY, NOW).held_back
    off = decide_retrain(windows(), [], POLICY.model_copy(update={"enabled": False}), NOW)
    assert off.trigger and not off.start and off.held_back == "monitor.retrain.enabled is off"


def test_the_decision_log_reads_back_what_it_wrote_and_a_person_can_read_it(tmp_path):
    log = DecisionLog(tmp_path / "decisions", "flights")
    decision = decide_retrain(windows(), [], POLICY, NOW, champion="1")
    decision.job_id, decision.outcome = "flights-retrain-1", "v2: canary: better; canary promote: v2 serves"
    log.append(decision.to_dict())
    log.append({"event": "retrain", "time": NOW.isoformat(), "version": "2", "judged": "canary: better",
                "release": "promote"})
    entries = log.read()
    assert entries[0]["train"] == [3, 4] and entries[0]["start"] and entries[1]["version"] == "2"
    text = log.text_path.read_text().splitlines()
    assert "RETRAIN started (job flights-retrain-1)" in text[0] and "-> v2: canary" in text[0]
    assert text[1].endswith("retrain v2: canary: better; release: promote")
    assert decide_retrain(windows(), entries, POLICY, NOW + timedelta(hours=2)).held_back.startswith("window 7")


def test_the_canary_policy_qualifies_a_better_version_without_moving_the_alias():
    champion, better, worse = (Measurement(v, {"test_auc": auc}) for v, auc in (("1", 0.70), ("2", 0.75),
                                                                                   ("3", 0.69)))
    qualified = decide("m", "champion", "canary", "test_auc", "max", 0.01, better, champion)
    assert qualified.qualified and not qualified.promote and "released through a canary" in qualified.reason
    refused = decide("m", "champion", "canary", "test_auc", "max", 0.01, worse, champion)
    assert refused.qualified is False and not refused.promote and "champion keeps serving" in refused.reason
    failing = decide("m", "champion", "canary", "test_auc", "max", 0.0, better, champion, False, ["monotone"])
    assert not failing.qualified and "behaviour checks failed" in failing.reason
    first = decide("m", "champion", "canary", "test_auc", "max", 0.0, better, None)
    assert first.promote  # nothing to canary against: the first version is the champion
    assert decide("m", "champion", "if_better", "test_auc", "max", 0.0, better, champion).qualified


def test_windows_by_an_event_time_column_with_labels_prediction_drift_and_decay():
    rng = np.random.default_rng(0)
    months, temps, predictions, labels = [], [], [], []
    for month, (shift, noise) in enumerate([(0.0, 0.0), (0.0, 0.0), (15.0, 0.45)], start=1):
        n = 600
        months += [month] * n
        temps += list(rng.normal(10 + shift, 5, n))
        truth = rng.random(n) < 0.3
        score = np.clip(np.where(truth, 0.7, 0.2) + rng.normal(0, 0.1 + noise, n), 0.01, 0.99)
        predictions += list(score)
        labels += list(np.where(truth, 30.0, 0.0))
    log = pa.table({"month": months, "temp": temps, "prediction": predictions,
                    "model_version": ["4"] * len(months), "timestamp": pa.array([NOW] * len(months))})
    labelled = log.append_column("arr_delay", pa.array(labels))
    profile = {"numeric": {"temp": {"quantiles": np.quantile(rng.normal(10, 5, 50_000), np.linspace(0, 1, 101))
                                    .tolist()}}}
    settings = MonitorConfig(window="column", window_column="month")
    judged = judge_windows(log, profile, settings, labelled, {"task": "classification", "threshold": 15.0},
                           "arr_delay", Decay("auc", 0.99, "max", 0.05))
    assert [w.key for w in judged] == [1, 2, 3] and [w.start for w in judged] == ["1", "2", "3"]
    assert [w.drifted for w in judged] == [False, False, True]
    assert judged[0].prediction.psi == pytest.approx(0.0, abs=1e-9) and judged[1].prediction.psi < 0.05
    assert judged[2].prediction_drifted and judged[2].prediction.psi > 0.25
    assert judged[0].performance["live_auc"] > 0.95 and not judged[0].decayed
    assert judged[2].performance["live_auc"] < 0.9 and judged[2].decayed
    successor = judge_windows(log, profile, settings, labelled, {"task": "classification", "threshold": 15.0},
                              "arr_delay", Decay("auc", 0.99, "max", 0.05), version="5")
    assert [w.labelled_rows for w in successor] == [600] * 3  # data to learn from, whoever answered
    assert not any(w.performance or w.decayed for w in successor)  # v5 is not blamed for v4's answers
    assert [w.served_performance for w in successor] == [w.performance for w in judged]  # what served, measured
    with pytest.raises(KeyError, match="'hour_of_day' is not a logged column"):
        judge_windows(log, profile, MonitorConfig(window="column", window_column="hour_of_day"))


def test_windows_by_count_follow_the_order_rows_were_served():
    from datetime import timedelta as delta

    times = [NOW + delta(seconds=s) for s in (5, 1, 3, 2, 4, 0)]
    log = pa.table({"timestamp": pa.array(times), "request_id": list("abcdef"), "record_index": [0] * 6,
                    "temp": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "prediction": [0.5] * 6, "model_version": ["1"] * 6})
    judged = judge_windows(log, {"numeric": {}}, MonitorConfig(window="count", window_rows=4, min_window_rows=1))
    assert [(w.key, w.rows) for w in judged] == [(0, 4), (1, 2)]
    from mlscale.monitor.windows import with_windows

    keyed = with_windows(log, MonitorConfig(window="count", window_rows=4))
    assert dict(zip(keyed.column("request_id").to_pylist(), keyed.column("window_key").to_pylist(), strict=True)) \
        == {"f": 0, "b": 0, "d": 0, "c": 0, "e": 1, "a": 1}


def test_the_retrain_job_command_reproduces_the_config_exactly():
    import shlex

    from mlscale.monitor.jobs import retrain_entrypoint
    from mlscale.monitor.retrain import retrain_config

    config = load_config("flights", {"monitor.window": "column", "monitor.window_column": "month",
                                     "monitor.retrain.min_delta": 0.002, "train.epochs": 1})
    job = retrain_config(config, [6, 7], [8], [9])
    assert job.split.train == [6, 7] and job.split.test == [9] and job.split.column == "month"
    assert job.tracking.promotion == "canary" and job.tracking.promotion_min_delta == 0.002
    words = shlex.split(retrain_entrypoint(job))
    assert words[:4] == ["python", "-m", "mlscale.entry", "retrain"]
    overrides = parse_overrides([word for word in words[4:] if word != "--set"])
    assert load_config(None, overrides) == job
    from mlscale.errors import ConfigError

    with pytest.raises(ConfigError, match="monitor.window: column"):
        retrain_config(load_config("flights"), [1], [2], [3])


def test_a_replay_never_writes_into_the_production_log_or_labels(tmp_path):
    from mlscale.replay import replay_config

    config = load_config("flights-replay", {
        "storage.root": str(tmp_path), "serve.prediction_log": {"path": "s3://prod/log", "sample_rate": 0.5},
        "monitor.labels": {"path": "s3://prod/labels", "column": "arr_delay"}})
    replayed = replay_config(config)
    assert replayed.serve.prediction_log.path == str(tmp_path / "replay" / "flights-replay" / "log")
    assert replayed.serve.prediction_log.sample_rate == 0.5
    assert replayed.monitor.labels.path.startswith(str(tmp_path)) and replayed.monitor.labels.column == "arr_delay"
    assert (replayed.monitor.window, replayed.monitor.window_column) == ("column", "month")


def _claim(folder: str, window: str, ready, results) -> None:
    ready.wait()
    results.put(DecisionLog(__import__("pathlib").Path(folder), "flights").claim(window))


def test_one_of_many_monitors_claims_a_window_and_a_torn_line_breaks_no_read(tmp_path):
    """Eight processes claim the same window at once: exactly one wins. A crash mid-write leaves a torn last line:
    reads skip it, and the next entry is a line of its own."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # separate processes, started fast
    ready, results = context.Event(), context.Queue()
    workers = [context.Process(target=_claim, args=(str(tmp_path), "7", ready, results)) for _ in range(8)]
    for worker in workers:
        worker.start()
    ready.set()
    claims = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert sorted(claims) == [False] * 7 + [True]
    log = DecisionLog(tmp_path, "flights")
    assert log.claim("8") and not log.claim("8")
    log.append({"event": "monitor", "window": "6", "start": True, "time": NOW.isoformat()})
    with log.entries_path.open("a") as out:
        out.write('{"event": "monitor", "window": "7", "sta')  # the process died here
    assert [entry["window"] for entry in log.read()] == ["6"]
    log.append({"event": "monitor", "window": "8", "start": False, "time": NOW.isoformat()})
    assert [entry["window"] for entry in log.read()] == ["6", "8"]


def test_the_start_written_before_submitting_and_again_after_counts_once():
    started = {"event": "monitor", "window": "5", "start": True, "time": (NOW - timedelta(hours=3)).isoformat()}
    history = [started, {**started, "job_id": "j-1", "outcome": "v2: better"}]
    cap_one = POLICY.model_copy(update={"max_per_day": 2, "cooldown_s": 60})
    assert decide_retrain(windows(), history, cap_one, NOW).start  # one start in the last day, not two


def test_a_retrain_stopped_at_its_timeout_ends_its_canary_and_says_what_serves(monkeypatch):
    """The monitor stops a retrain job that outlived monitor.retrain.timeout_s, perhaps mid-canary: it ends the
    app's canary leases (a stopped job runs no cleanup) and its outcome says what is true."""
    import ray.job_submission

    import mlscale.serve.ledger as ledger
    from mlscale.monitor.jobs import submit_retrain

    stopped, ended = [], []

    class Running:
        def is_terminal(self):
            return False

    class Client:
        def __init__(self, address):
            pass

        def submit_job(self, **kwargs):
            return "job-1"

        def get_job_status(self, job_id):
            return Running()

        def stop_job(self, job_id):
            stopped.append(job_id)

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    monkeypatch.setattr(ledger, "end_leases", lambda app, rollout=None: ended.append(app))
    config = load_config("flights", {"monitor.window": "column", "monitor.window_column": "month",
                                     "monitor.retrain.timeout_s": 0.01, "monitor.retrain.jobs_address": "http://x"})
    decision = decide_retrain(windows(), [], POLICY, NOW)
    submit_retrain(config, decision)
    assert stopped == ["job-1"] and ended == [config.serve.app_name]
    assert decision.outcome.endswith("any canary it started was ended: the champion serves alone")

    def unreachable(app, rollout=None):
        raise ConnectionError("ledger down")

    monkeypatch.setattr(ledger, "end_leases", unreachable)
    submit_retrain(config, decision)
    assert f"within {config.serve.canary.lease_s:g} s" in decision.outcome


def test_the_monitor_with_no_prediction_log_says_what_to_turn_on(tmp_path):
    """Before any traffic was logged there is nothing to judge: a SourceError (exit 3) naming the setting and the
    path it looked in, before any model is downloaded (a pinned URI: no registry lookup either)."""
    from mlscale.errors import SourceError
    from mlscale.stages.monitor import log_path_of, monitor_stage

    config = load_config("flights-small", {"storage.root": str(tmp_path)})
    with pytest.raises(SourceError, match="serve.prediction_log") as raised:
        monitor_stage(config, "models:/flights-small-late-arrival/1")
    assert log_path_of(config) in str(raised.value) and raised.value.exit_code == 3
