"""Whether the monitor retrains now, as a pure function of the judged windows, the decision log and the policy; and
the decision log itself: one JSON line per decision (for code) beside one readable line (for people)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mlscale.config import PipelineConfig, RetrainConfig, SplitConfig
from mlscale.errors import ConfigError
from mlscale.monitor.windows import WindowDrift

log = logging.getLogger(__name__)


@dataclass
class RetrainDecision:
    """What the monitor decided on its newest windows, why, and which windows a retrain would use."""

    time: str
    window: str | None  # the newest judged window
    trigger: bool  # drift or decay passed its threshold
    start: bool = False  # trigger, and nothing (cool-down, cap, labels, policy off) held it back
    reasons: list[str] = field(default_factory=list)
    held_back: str | None = None
    champion: str | None = None
    train: list[Any] = field(default_factory=list)  # window keys (the time column's values)
    val: list[Any] = field(default_factory=list)
    test: list[Any] = field(default_factory=list)
    job_id: str | None = None
    outcome: str | None = None  # the retrain job's end: its status and what it released
    gain: float | None = None  # the new version's metric minus the champion's, on the newest labelled windows
    cost: dict[str, float] | None = None  # what the retrain job cost (mlscale.cost): beside the gain it bought

    def to_dict(self) -> dict[str, Any]:
        return {"event": "monitor", **asdict(self)}


def decide_retrain(windows: list[WindowDrift], history: list[dict[str, Any]], policy: RetrainConfig,
                   now: datetime, champion: str | None = None, min_rows: int = 1) -> RetrainDecision:
    """Trigger on the newest judged window's drift and the newest labelled window's decay (as `policy.on` says);
    start only when enough labelled windows exist for train, val and test, no retrain started within the
    cool-down, fewer than `max_per_day` started in the last 24 hours, and this window has not triggered one
    already (a monitor run on a schedule sees the same window many times). A window is labelled data when at least
    `min_rows` of its rows have their labels, whichever version answered them.

    Args:
        windows: the judged windows, oldest first.
        history: the decision log's entries (what started before, and when).
        policy: monitor.retrain.
        now: the decision's time (cool-down and cap are measured from it).
        champion: the serving version, recorded with the decision.
        min_rows: labelled rows a window needs to be learnt from.

    Returns:
        The decision: whether it triggered, whether a retrain starts, why, and the train/val/test windows.
    """
    judged = [window for window in windows if window.overall is not None]
    newest = judged[-1] if judged else None
    decision = RetrainDecision(time=now.isoformat(), window=newest.start if newest else None, trigger=False,
                               champion=champion)
    if newest is None:
        decision.reasons = ["no window has enough rows to judge"]
        return decision
    if "drift" in policy.on and newest.drifted:
        decision.reasons.append(f"drift {newest.overall:.3f} in window {newest.start}"
                                f" ({', '.join(newest.drifted_features) or 'spread over the features'})")
    measured = [window for window in windows if window.performance]
    if "decay" in policy.on and measured and measured[-1].decayed:
        performance = measured[-1].performance
        shown = ", ".join(f"{k} {v:.4f}" for k, v in performance.items() if not k.endswith("_rows"))
        decision.reasons.append(f"decay in window {measured[-1].start}: {shown}")
    labelled = [window for window in windows if window.labelled_rows >= min_rows]
    decision.trigger = bool(decision.reasons)
    if not decision.trigger:
        decision.reasons = [f"no drift or decay in window {newest.start}"]
        return decision
    needed = policy.train_windows + policy.val_windows + policy.test_windows
    recent = [window.key for window in labelled[-needed:]]
    decision.train = recent[:policy.train_windows]
    decision.val = recent[policy.train_windows:policy.train_windows + policy.val_windows]
    decision.test = recent[policy.train_windows + policy.val_windows:]
    decision.held_back = _held_back(decision, history, policy, now, len(labelled), needed)
    decision.start = decision.held_back is None
    return decision


def _held_back(decision: RetrainDecision, history: list[dict[str, Any]], policy: RetrainConfig, now: datetime,
               labelled: int, needed: int) -> str | None:
    # one start per decision: its entry is written before the job is submitted, and again with the job's outcome
    started = list({(entry.get("window"), entry.get("time")): entry for entry in history
                    if entry.get("event") == "monitor" and entry.get("start")}.values())
    if not policy.enabled:
        return "monitor.retrain.enabled is off"
    if any(entry.get("window") == decision.window for entry in started):
        return f"window {decision.window} has triggered a retrain already"
    if labelled < needed:
        return f"{labelled} labelled windows; a retrain needs {needed} (train, val, test)"
    times = [datetime.fromisoformat(entry["time"]) for entry in started]
    if times and now - max(times) < timedelta(seconds=policy.cooldown_s):
        return f"cool-down: the last retrain started at {max(times).isoformat()} ({policy.cooldown_s:g} s)"
    if sum(now - time < timedelta(days=1) for time in times) >= policy.max_per_day:
        return f"cap: {policy.max_per_day} retrains started in the last 24 hours"
    return None


class DecisionLog:
    """Every retraining decision, appended: `<name>.jsonl` to read back, `<name>.log` to read; and the claims that
    let only one of several monitors start the retrain for a window."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.entries_path = folder / f"{name}.jsonl"
        self.text_path = folder / f"{name}.log"
        self.claims = folder / f"{name}.claims"

    def read(self) -> list[dict[str, Any]]:
        """The entries; a line that is not JSON (a write torn by a crash) is skipped with a warning, not fatal to
        every later read."""
        if not self.entries_path.exists():
            return []
        entries = []
        for number, line in enumerate(self.entries_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not a whole entry (a torn write?); skipped", self.entries_path, number)
        return entries

    def claim(self, window: str | None) -> bool:
        """Take the right to start this window's retrain: True for exactly one caller, on this machine or any that
        shares the folder (an exclusive create), however many monitors decide at once."""
        self.claims.mkdir(exist_ok=True)
        key = str(window)
        name = "".join(char if char.isalnum() or char in "-_." else "_" for char in key)[:80]
        path = self.claims / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def append(self, entry: dict[str, Any]) -> None:
        with self.entries_path.open("a+") as out:
            out.seek(0, os.SEEK_END)
            if out.tell():  # a torn last line: end it, so this entry is a line of its own
                out.seek(out.tell() - 1)
                if out.read(1) != "\n":
                    out.write("\n")
            out.write(json.dumps(entry, default=str) + "\n")
        with self.text_path.open("a") as out:
            out.write(readable(entry) + "\n")


def readable(entry: dict[str, Any]) -> str:
    """One line a person reads: when, what was decided, why."""
    when = str(entry.get("time", ""))[:19]
    if entry.get("event") == "monitor":
        if entry.get("start"):
            job = entry.get("job_id") or "being submitted"
            what = (f"RETRAIN started (job {job}) on windows {entry.get('train')} / "
                    f"{entry.get('val')} / {entry.get('test')}")
        elif entry.get("trigger"):
            what = f"retrain held back: {entry.get('held_back')}"
        else:
            what = "no retrain"
        outcome = f" -> {entry['outcome']}" if entry.get("outcome") else ""
        if entry.get("cost"):
            outcome += f" (cost {entry['cost'].get('cluster_cpu_s', 0):.0f} reserved CPU-s, " \
                       f"{entry['cost'].get('wall_s', 0):.0f} s)"
        return f"{when} window {entry.get('window')}: {what}; {'; '.join(entry.get('reasons', []))}{outcome}"
    return (f"{when} retrain v{entry.get('version')}: {entry.get('judged')}; release: "
            f"{entry.get('release') or 'none'}")


def decision_log(config: PipelineConfig) -> DecisionLog:
    """The pipeline's decision log, under its storage root: the monitor and the retrain job both write it.

    Args:
        config: the pipeline's config (its name and storage.root place the log).
    """
    return DecisionLog(config.storage.root_path / "decisions", config.name)


def retrain_config(config: PipelineConfig, train: list[Any], val: list[Any], test: list[Any]) -> PipelineConfig:
    """The pipeline's own config over the recent windows: a time split on the window column, and the canary
    promotion policy (judged like if_better with the retrain margin; only the canary moves the alias)."""
    column = config.monitor.window_column
    if config.monitor.window != "column" or not column:
        raise ConfigError("monitor.retrain needs monitor.window: column (a logged time column such as the month, "
                          "which the retrain's time split selects its windows by)")
    split = SplitConfig(method="time", column=column, train=train, val=val, test=test)
    tracking = config.tracking.model_copy(update={"promotion": "canary",
                                                  "promotion_min_delta": config.monitor.retrain.min_delta})
    # the job runs in another working directory: a relative local storage root means this process's
    storage = config.storage.model_copy(update={"root": str(config.storage.root_path)})
    return config.model_copy(update={"split": split, "tracking": tracking, "storage": storage})
