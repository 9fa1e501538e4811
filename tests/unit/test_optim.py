"""Learning-rate schedules, early stopping and the attempt log: the pieces of the loop that decide by numbers."""

import math

import pyarrow.fs as pafs
import pytest
import torch

from mlscale.config import OptimizerConfig, ScheduleConfig
from mlscale.train.optim import EarlyStopping, build_optimizer, build_scheduler, lr_factor
from mlscale.train.progress import ProgressLog, repeated_steps

SCHEDULE = ScheduleConfig(name="cosine", warmup_fraction=0.1, min_lr_ratio=0.1, step_every_epochs=1, gamma=0.5)


def test_warmup_then_cosine_to_the_floor():
    factors = [lr_factor(step, 100, 10, SCHEDULE) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 100, 10, SCHEDULE) == pytest.approx(0.1)
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_step_and_constant_schedules():
    step = SCHEDULE.model_copy(update={"name": "step", "warmup_fraction": 0.0, "step_every_epochs": 2})
    assert [lr_factor(s, 100, 10, step) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(50, 100, 10, SCHEDULE.model_copy(update={"name": "constant"})) == 1.0


def test_scheduler_state_resumes_the_same_rate():
    model = torch.nn.Linear(2, 1)
    settings = OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.0, momentum=0.9)
    first = build_optimizer(model.parameters(), settings)
    scheduler = build_scheduler(first, 100, 10, SCHEDULE)
    for _ in range(37):
        first.step()
        scheduler.step()
    second = build_optimizer(model.parameters(), settings)
    resumed = build_scheduler(second, 100, 10, SCHEDULE)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    assert resumed.get_last_lr()[0] == pytest.approx(0.1 * lr_factor(37, 100, 10, SCHEDULE))


def test_early_stopping_counts_evaluations_without_improvement():
    stopper = EarlyStopping("max", patience=2, min_delta=0.01)
    assert [stopper.update(v) for v in (0.80, 0.85, 0.855, 0.851, 0.859)] == [False] * 4 + [True]
    assert stopper.best == 0.85
    minimizing = EarlyStopping("min", patience=0)
    assert [minimizing.update(v) for v in (1.0, 0.9, 0.95)] == [False, False, True]
    disabled = EarlyStopping("max", patience=0, enabled=False)
    assert not any(disabled.update(v) for v in (0.9, 0.8, 0.7))
    restored = EarlyStopping("max", patience=2, min_delta=0.01, **stopper.state())
    assert restored.bad_evaluations == stopper.bad_evaluations and restored.best == stopper.best


def test_progress_log_measures_repeated_work(tmp_path):
    log = ProgressLog(pafs.LocalFileSystem(), str(tmp_path / "run"))
    first = log.start(0)
    first.step(60)
    second = log.start(50)  # restarted from the checkpoint at step 50: steps 51-60 are done twice
    second.step(200, finished=True)
    attempts = log.attempts()
    assert [(a.started_from_step, a.last_step, a.finished) for a in attempts] == [(0, 60, False), (50, 200, True)]
    assert repeated_steps(attempts) == 10
    assert ProgressLog(pafs.LocalFileSystem(), str(tmp_path / "other")).attempts() == []
