"""Promotion as a decision, then an act.

`measure` scores both versions through the same batch path (evaluate.score) on the same rows, so the comparison
measures the models, not the data. `decide` is a pure function from those measurements, the behavioural verdict and
the policy to a `PromotionDecision` naming the exact versions involved; it is tested without Ray or MLflow.
`apply_decision` moves the alias to the decided version only if the alias still points where the decision saw it
(compare-and-set under a lock), and records the decision as registry tags. So two trainings finishing at once can
never make an unjudged version the champion: each decision promotes the version it judged, against the champion it
judged it against, or fails with PromotionConflict.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
import ray
import ray.data

from mlscale.config import EvaluateConfig, PipelineConfig, PromotionPolicy
from mlscale.direction import gain
from mlscale.errors import NothingToServe, PromotionConflict, PromotionError
from mlscale.evaluate import Evaluation, evaluate, score
from mlscale.registry.store import label_of, set_alias, version_of
from mlscale.tracking import tracking_client
from mlscale.uris import model_uri

Policy = PromotionPolicy
DECISION_TAG = "mlscale.promotion"


@dataclass(frozen=True)
class Measurement:
    """One registered version's metrics on the evaluated split."""

    version: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether `challenger_version` replaces `champion_version` behind `alias`, and why, with the numbers."""

    model: str
    alias: str
    challenger_version: str
    champion_version: str | None  # where the alias pointed when the decision was made (None: not set)
    promote: bool
    policy: str
    metric: str
    mode: str
    challenger_value: float | None
    champion_value: float | None
    delta: float | None  # challenger minus champion
    behaviour_passed: bool
    reason: str
    qualified: bool | None = None  # if_better / canary: it beat the champion by the margin and passed its checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judged_elsewhere(model: str, alias: str, challenger_version: str, champion_version: str | None, policy: str,
                     reason: str, metric: str = "manual_promotion", mode: str = "max",
                     challenger_value: float | None = None, champion_value: float | None = None) -> PromotionDecision:
    """A promotion judged outside `decide`: by a person (`mlscale registry promote`) or by a canary's live numbers.
    The same record as `decide` gives, so applying it, tagging the version and reading it back work alike."""
    return PromotionDecision(model=model, alias=alias, challenger_version=challenger_version,
                             champion_version=champion_version, promote=True, policy=policy, metric=metric,
                             mode=mode, challenger_value=challenger_value, champion_value=champion_value, delta=None,
                             behaviour_passed=True, reason=reason, qualified=True)


def decide(model: str, alias: str, policy: str, metric: str, mode: Literal["max", "min"], min_delta: float,
           challenger: Measurement, champion: Measurement | None, behaviour_passed: bool = True,
           behaviour_failures: Sequence[str] = ()) -> PromotionDecision:
    """The promotion policy as a pure function.

    Args:
        model, alias: the registered model and the alias that would move (e.g. champion).
        policy: `if_better` (better than the champion by more than min_delta, and behaviour passed), `always`
            (a forced promotion, whatever the numbers and the behavioural tests say), or `manual` (never here).
        metric, mode: the compared metric (e.g. test_auc) and whether higher ("max") or lower is better.
        min_delta: how much better the challenger must be under if_better.
        challenger, champion: the measured versions; champion None when the alias is not set.
        behaviour_passed, behaviour_failures: the challenger's behavioural verdict and the checks it failed.

    Returns:
        A decision naming both exact versions; `promote` says whether applying it moves the alias.

    Raises:
        PromotionError: for an unknown policy, or a metric missing from a measurement.
    """
    for measured in (challenger, champion):
        if measured is not None and metric not in measured.metrics:
            raise PromotionError(f"version {measured.version} of {model} has no {metric} to compare "
                                 f"(has {sorted(measured.metrics)})")
    mine = challenger.metrics[metric]
    theirs = champion.metrics[metric] if champion is not None else None
    delta = mine - theirs if theirs is not None else None

    def verdict(promote: bool, reason: str) -> PromotionDecision:
        qualified = promote if policy == "if_better" else None
        if policy == "canary" and champion is not None:  # qualifies for a canary; only the canary moves the alias
            qualified, promote = promote, False
            reason = reason.replace("if_better:", "canary:", 1) + ("; released through a canary" if qualified
                                                                    else "; the champion keeps serving")
        return PromotionDecision(
            model=model, alias=alias, challenger_version=challenger.version,
            champion_version=champion.version if champion else None, promote=promote, policy=policy, metric=metric,
            mode=mode, challenger_value=mine, champion_value=theirs, delta=delta, behaviour_passed=behaviour_passed,
            reason=reason, qualified=qualified)

    numbers = f"{metric} {mine:.5f}" + (f" vs {theirs:.5f} (v{champion.version})" if champion else "")
    if policy == "always":
        return verdict(True, f"always: {numbers}")
    if policy == "manual":
        return verdict(False, f"manual: {numbers}; promote with `mlscale registry promote`")
    if policy not in ("if_better", "canary"):
        raise PromotionError(f"tracking.promotion {policy!r} is unknown; known: always, if_better, manual, canary")
    if not behaviour_passed:
        return verdict(False, f"if_better: behaviour checks failed: {list(behaviour_failures)}; {numbers}")
    if champion is None:
        return verdict(True, f"if_better: no {alias} yet; {numbers}")
    if champion.version == challenger.version:
        return verdict(False, f"if_better: v{challenger.version} is already {alias}")
    assert theirs is not None and delta is not None
    better = gain(mine, theirs, mode) > min_delta
    return verdict(better, f"if_better: {numbers}: " + ("better" if better else f"not better by more than "
                                                                                 f"{min_delta:g}"))


def _registry_lock_path(tracking_uri: str) -> Path:
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mlscale-registry-{digest}.lock"


CLUSTER_LOCK_TTL_S = 60.0  # a holder that died frees the cluster lock after this long
CLUSTER_LOCK_WAIT_S = 120.0


class ClusterLock:
    """A lock every process of a Ray cluster shares, on any node: one detached actor per registry. A lease, so a
    holder that dies mid-promotion frees it after CLUSTER_LOCK_TTL_S (an actor restart frees it too)."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.until = 0.0

    def acquire(self, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if self.holder in (None, owner) or now >= self.until:
            self.holder, self.until = owner, now + ttl_s
            return True
        return False

    def release(self, owner: str) -> None:
        if self.holder == owner:
            self.holder = None


# applied as a call: a class decorator would hide ActorClass.options from type checkers
ClusterLockActor: Any = ray.remote(num_cpus=0, max_restarts=-1)(ClusterLock)


@contextmanager
def cluster_lock(tracking_uri: str) -> Iterator[None]:
    """Held while an alias moves, across every machine of the connected cluster (nothing without a cluster)."""
    if not ray.is_initialized():
        yield
        return
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    lock = ClusterLockActor.options(name=f"mlscale-registry-{digest}", namespace="mlscale", get_if_exists=True,
                                    lifetime="detached").remote()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + CLUSTER_LOCK_WAIT_S
    while not ray.get(lock.acquire.remote(owner, CLUSTER_LOCK_TTL_S), timeout=30):
        if time.monotonic() > deadline:
            raise PromotionConflict(f"another promotion on this registry held its lock for {CLUSTER_LOCK_WAIT_S:g} s: "
                                    "not applied; try again")
        time.sleep(0.05)
    try:
        yield
    finally:
        ray.get(lock.release.remote(owner), timeout=30)


@contextmanager
def machine_lock(tracking_uri: str) -> Iterator[None]:
    """Serializes alias moves on one registry among processes of this machine (an OS file lock, released even when
    the holder dies)."""
    with open(_registry_lock_path(tracking_uri), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def registry_lock(tracking_uri: str) -> Iterator[None]:
    """Serializes alias moves on one registry: among the processes of this machine (machine_lock) and among the
    machines of the connected Ray cluster (cluster_lock). A writer outside both (a laptop and a cluster sharing
    one registry) is caught by the read-back check in apply_decision."""
    with machine_lock(tracking_uri), cluster_lock(tracking_uri):
        yield


def who() -> str:
    run = mlflow.active_run()
    return f"{getpass.getuser()}@{socket.gethostname()}" + (f" run {run.info.run_id}" if run else "")


def stamp() -> dict[str, str]:
    """Who made a recorded decision (user@host, and the MLflow run if one is active) and when: every record of a
    promotion or a release carries it."""
    return {"by": who(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def apply_decision(decision: PromotionDecision, tracking_uri: str) -> bool:
    """Carry out a decision: move the alias to decision.challenger_version if, and only if, the alias still points
    at decision.champion_version; the old version stays reachable as previous_<alias>. The decision (who, what,
    why, the numbers) is recorded as tags on the challenger version and on the registered model.

    Args:
        decision: what `decide` or `judge_against_champion` returned.
        tracking_uri: the registry's store.

    Returns:
        True when the alias moved.

    Raises:
        PromotionConflict: the alias moved since the decision was made (the decision is stale: judge again).
    """
    client = tracking_client(tracking_uri)
    record = {**decision.to_dict(), **stamp()}
    if decision.promote:
        with registry_lock(tracking_uri):
            current = version_of(decision.model, decision.alias, tracking_uri)
            if current != decision.champion_version:
                raise PromotionConflict(
                    f"{decision.model}@{decision.alias} is v{current} now, but the decision to promote "
                    f"v{decision.challenger_version} was made against v{decision.champion_version}: not applied; "
                    f"judge v{decision.challenger_version} again against the current {decision.alias}")
            if current is not None and current != decision.challenger_version:
                set_alias(decision.model, f"previous_{decision.alias}", current, tracking_uri)
            set_alias(decision.model, decision.alias, decision.challenger_version, tracking_uri)
        now = version_of(decision.model, decision.alias, tracking_uri)
        if now != decision.challenger_version:  # a writer outside both locks (another cluster, a laptop)
            raise PromotionConflict(f"{decision.model}@{decision.alias} was moved to v{now} by another writer while "
                                    f"v{decision.challenger_version} was being promoted")
    text = json.dumps(record, sort_keys=True, default=str)
    client.set_model_version_tag(decision.model, decision.challenger_version, DECISION_TAG, text)
    client.set_model_version_tag(decision.model, decision.challenger_version, f"{DECISION_TAG}.promoted",
                                 str(decision.promote).lower())
    client.set_registered_model_tag(decision.model, f"{DECISION_TAG}.last", text)
    return decision.promote


def evaluate_model(settings: EvaluateConfig, dataset: ray.data.Dataset, uri: str, tracking_uri: str,
                   prefix: str = "test", label: dict[str, Any] | None = None, variant: str = "fp32") -> Evaluation:
    """Score a registered version on a dataset through the bundle and compute its metrics, slices and calibration.

    The label spec comes from the caller or the version's tags, so the bundle is downloaded once (by the scorer).
    """
    label = label or label_of(uri, tracking_uri)
    return evaluate(score(dataset, uri, tracking_uri, variant=variant), label, prefix, settings.slices,
                    settings.min_slice_rows, settings.calibration_bins)


def resolve_version(model: str, reference: str, tracking_uri: str) -> str | None:
    """The version number behind a version or an alias (None: the alias is not set)."""
    return reference if reference.isdigit() else version_of(model, reference, tracking_uri)


def measure(config: PipelineConfig, dataset: ray.data.Dataset, version: str, prefix: str = "test",
            evaluation: Evaluation | None = None) -> tuple[Measurement, Evaluation]:
    """One pinned version measured on the dataset (or an evaluation already made of it)."""
    uri = model_uri(config.tracking.registered_model, version)
    evaluation = evaluation or evaluate_model(config.evaluate, dataset, uri, config.tracking_uri, prefix)
    return Measurement(version, evaluation.metrics), evaluation


def judge_against_champion(config: PipelineConfig, dataset: ray.data.Dataset, challenger: str,
                           champion_alias: str | None = None, prefix: str = "test",
                           challenger_evaluation: Evaluation | None = None, behaviour_passed: bool = True,
                           behaviour_failures: Sequence[str] = (), policy: str | None = None) -> PromotionDecision:
    """Measure a challenger and the version the champion alias points at now, on the same rows, and decide.

    The champion's version is read once and pinned: the decision compares exactly the two versions it names.

    Args:
        config: the pipeline config (registered model, metric, promotion policy and min delta, evaluation).
        dataset: the rows both are scored on (e.g. the test split).
        challenger: a version number or an alias.
        champion_alias: the alias that would move; None: tracking.alias.
        prefix: the metrics' prefix (the split's name).
        challenger_evaluation: an evaluation of the challenger on these rows already made (not scored again).
        behaviour_passed, behaviour_failures: the challenger's behavioural verdict.
        policy: overrides tracking.promotion.

    Returns:
        The decision; apply it with `apply_decision`.

    Raises:
        PromotionError: the challenger alias is not set.
    """
    _, mode = config.metric
    model = config.tracking.registered_model
    alias = champion_alias or config.tracking.alias
    challenger_version = resolve_version(model, challenger, config.tracking_uri)
    if challenger_version is None:
        raise PromotionError(f"model {model!r} has no version with alias {challenger!r}")
    champion_version = version_of(model, alias, config.tracking_uri)
    mine, _ = measure(config, dataset, challenger_version, prefix, challenger_evaluation)
    theirs = measure(config, dataset, champion_version, prefix)[0] if champion_version is not None else None
    return decide(model, alias, policy or config.tracking.promotion, f"{prefix}_{config.metric_stem}", mode,
                  config.tracking.promotion_min_delta, mine, theirs, behaviour_passed, behaviour_failures)


def require_served_version(config: PipelineConfig, trained_version: str, reason: str) -> str:
    """The version behind the serving alias; a clear error when training left it unset."""
    version = version_of(config.tracking.registered_model, config.tracking.alias, config.tracking_uri)
    if version is None:
        raise NothingToServe(f"{config.tracking.registered_model}@{config.tracking.alias} is not set: version "
                             f"{trained_version} was not promoted ({reason}); nothing to deploy")
    return version
