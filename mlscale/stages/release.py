"""The canary release: the challenger served beside the champion on a share of live traffic, judged by the pure
release policy (mlscale.serve.release) on the numbers the replicas report, then applied: a rollback serves the
champion alone again; a promotion moves the registry alias through the promotion decision (compare-and-set) and
serves the challenger alone. Every decision is recorded as MLflow tags and a line in a readable release log.

Every step ends: once the canary is deployed, any failure or interruption (an MLflow error, the ledger restarting,
Ctrl-C, a conflicting promotion) serves what the champion alias names alone again and records an `abort` with its
cause before the error goes on. What cannot run an except block (a killed job, a lost driver node) is covered by the
canary's lease: the replicas stop routing to the challenger once nobody renews it."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlscale.config import PipelineConfig
from mlscale.errors import ConfigError, PromotionError
from mlscale.features.label import label_scale
from mlscale.promotion import apply_decision, judged_elsewhere, stamp
from mlscale.registry.store import label_of, pinned_uri, uri_version
from mlscale.serve.deploy import deploy
from mlscale.serve.ledger import end_leases, read_live, renew_lease
from mlscale.serve.live import LiveStats
from mlscale.serve.release import ReleaseDecision, decide_release
from mlscale.serve.rollout import Canary
from mlscale.tracking import tracking_client
from mlscale.uris import model_uri

log = logging.getLogger(__name__)
RELEASE_TAG = "mlscale.release"


@dataclass
class Release:
    decision: ReleaseDecision
    endpoint: str
    serving_version: str  # what the service answers with after the decision was applied
    log_path: str

    def summary(self) -> dict:
        return {"action": self.decision.action, "champion_version": self.decision.champion_version,
                "challenger_version": self.decision.challenger_version, "serving_version": self.serving_version,
                "reasons": self.decision.reasons, "elapsed_s": self.decision.elapsed_s,
                "champion": self.decision.champion, "challenger": self.decision.challenger,
                "endpoint": self.endpoint, "release_log": self.log_path}


def canary_stage(config: PipelineConfig, challenger: str = "challenger") -> Release:
    """Run a canary release to its end (promote, roll back, or hold when serve.canary.auto_promote is off).

    Args:
        config: the pipeline config (serve: the app; serve.canary: traffic share and thresholds; tracking: the
            registered model and the champion alias).
        challenger: a version number or an alias of the registered model.

    Returns:
        The decision with its reasons and live numbers, and which version serves now.

    Raises:
        NothingToServe: the champion alias is not set.
        PromotionError: the challenger is the champion already, or is not registered.
        PromotionConflict: the champion alias moved during the canary (the champion is served alone again).
    """
    if config.serve.graph is not None:
        raise ConfigError("serve.graph is set: a canary releases one model beside another, not a graph")
    model, policy = config.tracking.registered_model, config.serve.canary
    champion_served = pinned_uri(config.serving_uri, config.tracking_uri)
    challenger_uri = model_uri(model, challenger)
    try:
        challenger_served = pinned_uri(challenger_uri, config.tracking_uri)
    except Exception as error:  # noqa: BLE001 - an unknown version or alias, named for the caller
        raise PromotionError(f"challenger {challenger_uri} cannot be resolved: {error}") from None
    if challenger_served == champion_served:
        raise PromotionError(f"{challenger_uri} is v{uri_version(champion_served)}, the {config.tracking.alias} "
                             f"already: nothing to release")
    scale = label_scale(label_of(challenger_served, config.tracking_uri))  # read before anything is deployed
    rollout_id = uuid.uuid4().hex[:12]
    canary = Canary(uri=challenger_uri, served_uri=challenger_served, fraction=policy.fraction,
                    sticky_header=policy.sticky_header, rollout_id=rollout_id, app_name=config.serve.app_name,
                    lease_s=policy.lease_s)
    renew_lease(config.serve.app_name, rollout_id, policy.lease_s)
    try:
        endpoint = deploy(config, champion_served, canary=canary)
        log.info("canary %s: v%s on %.0f%% of traffic beside v%s", rollout_id, uri_version(challenger_served),
                 100 * policy.fraction, uri_version(champion_served))
        decision = watch_canary(config, rollout_id, uri_version(champion_served), uri_version(challenger_served),
                                scale)
        return apply_release(config, decision, champion_served, challenger_served, endpoint, rollout_id)
    except BaseException as error:  # Ctrl-C and a stopped job's SystemExit too: the canary must not outlive this
        abandon_canary(config, rollout_id, champion_served, challenger_served, error)
        raise


def watch_canary(config: PipelineConfig, rollout_id: str, champion: str, challenger: str,
                 scale: float) -> ReleaseDecision:
    """Read the live numbers every check_interval_s and judge them until the policy decides."""
    policy, started, last_shown = config.serve.canary, time.monotonic(), 0.0
    live: dict[str, LiveStats] = {}
    while True:
        time.sleep(policy.check_interval_s)
        try:
            renew_lease(config.serve.app_name, rollout_id, policy.lease_s)
            live = read_live(config.serve.app_name, rollout_id)
        except Exception as error:  # noqa: BLE001 - the ledger restarting: judge on the last numbers, retry next
            log.warning("canary %s: the release ledger did not answer (%s); trying again", rollout_id, error)
        elapsed = time.monotonic() - started
        decision = decide_release(policy, champion, challenger, live.get(champion, LiveStats()),
                                  live.get(challenger, LiveStats()), scale, elapsed)
        if decision.final:
            return decision
        if elapsed - last_shown >= 10:
            last_shown = elapsed
            log.info("canary %s after %.0f s: %s", rollout_id, elapsed, "; ".join(decision.reasons))


def apply_release(config: PipelineConfig, decision: ReleaseDecision, champion_served: str,
                  challenger_served: str, endpoint: str, rollout_id: str | None = None) -> Release:
    """Carry out a release decision, then record it (a rollback is applied before anything else can fail).

    Raises:
        PromotionConflict: the alias moved during the canary (the caller serves what it names now, alone).
    """
    if decision.action == "rollback":
        deploy(config, champion_served)
        serving = decision.champion_version
    elif decision.action == "promote":
        promotion = judged_elsewhere(
            config.tracking.registered_model, config.tracking.alias, decision.challenger_version,
            decision.champion_version, "canary", "canary: " + "; ".join(decision.reasons), metric="live_error_rate",
            mode="min", challenger_value=decision.challenger.get("error_rate"),
            champion_value=decision.champion.get("error_rate"))
        apply_decision(promotion, config.tracking_uri)  # a PromotionConflict goes to canary_stage's abandon
        deploy(config, challenger_served)
        serving = decision.challenger_version
    else:  # hold: the canary keeps its share for serve.canary.timeout_s, until someone promotes or rolls back
        if rollout_id is not None:
            renew_lease(config.serve.app_name, rollout_id, config.serve.canary.timeout_s)
        serving = f"{decision.champion_version}+{decision.challenger_version}"
    return Release(decision, endpoint, serving, str(record_release(config, decision)))


def abandon_canary(config: PipelineConfig, rollout_id: str, champion_served: str, challenger_served: str,
                   error: BaseException) -> None:
    """A canary that did not reach its end: its lease ended, what the champion alias names now served alone
    (the pinned champion when the registry cannot be read), and an `abort` recorded with the cause. Each step is
    tried whatever the last one did, so the release log says what is true."""
    steps: list[str] = []
    try:
        end_leases(config.serve.app_name, rollout_id)
        steps.append("lease ended")
    except Exception as failure:  # noqa: BLE001 - the lease still runs out by itself
        steps.append(f"lease not ended ({type(failure).__name__}); it runs out within "
                     f"{config.serve.canary.lease_s:g} s")
    try:
        serving = pinned_uri(config.serving_uri, config.tracking_uri)
    except Exception:  # noqa: BLE001 - the registry is what failed: the champion this canary started from
        serving = champion_served
    try:
        deploy(config, serving)
        steps.append(f"v{uri_version(serving)} serves alone")
    except Exception as failure:  # noqa: BLE001 - the replicas route to the champion once the lease is gone
        steps.append(f"redeploy failed ({type(failure).__name__}: {failure}); the replicas route to the champion "
                     "once the lease is gone")
    cause = "interrupted" if isinstance(error, KeyboardInterrupt | SystemExit) else f"{type(error).__name__}"
    decision = ReleaseDecision("abort", uri_version(champion_served), uri_version(challenger_served),
                               [f"{cause}: {str(error).splitlines()[0][:300] if str(error) else ''}"])
    record_release(config, decision, "; ".join(steps), best_effort=True)


def release_log_path(config: PipelineConfig) -> Path:
    return config.storage.root_path / "releases" / f"{config.name}.log"


def record_release(config: PipelineConfig, decision: ReleaseDecision, note: str = "",
                   best_effort: bool = False) -> Path:
    """A line in the release log, then the decision as tags on the challenger version and the registered model
    (best_effort: a registry that cannot be written is logged, not raised: the log line is the record then)."""
    record = {**decision.to_dict(), "note": note, **stamp()}
    path = _log_line(config, decision, record, note)
    text = json.dumps(record, sort_keys=True, default=str)
    model = config.tracking.registered_model
    try:
        client = tracking_client(config.tracking_uri)
        client.set_model_version_tag(model, decision.challenger_version, RELEASE_TAG, text)
        client.set_model_version_tag(model, decision.challenger_version, f"{RELEASE_TAG}.action", decision.action)
        client.set_registered_model_tag(model, f"{RELEASE_TAG}.last", text)
    except Exception as failure:
        if not best_effort:
            raise
        log.warning("release %s recorded in %s only: the registry did not take its tags (%s)", decision.action,
                    path, failure)
    return path


def _log_line(config: PipelineConfig, decision: ReleaseDecision, record: dict, note: str) -> Path:
    path = release_log_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (f"{record['at']} {decision.action.upper()} v{decision.challenger_version} (champion "
            f"v{decision.champion_version}) after {decision.elapsed_s:.0f} s: {'; '.join(decision.reasons)}"
            f"{' [' + note + ']' if note else ''} | champion {json.dumps(decision.champion)} | challenger "
            f"{json.dumps(decision.challenger)}")
    with path.open("a") as handle:
        handle.write(line + "\n")
    log.info("%s", line)
    return path
