"""The canary release: the challenger served beside the champion on a share of live traffic, judged by the pure
release policy (mlscale.serve.release) on the numbers the replicas report, then applied: a rollback serves the
champion alone again; a promotion moves the registry alias through the promotion decision (compare-and-set) and
serves the challenger alone. Every decision is recorded as MLflow tags and a line in a readable release log."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlscale.config import PipelineConfig
from mlscale.errors import ConfigError, PromotionConflict, PromotionError
from mlscale.features.label import label_scale
from mlscale.promotion import PromotionDecision, apply_decision, model_uri, who
from mlscale.registry.store import label_of, pinned_uri, uri_version
from mlscale.serve.app import Canary
from mlscale.serve.deploy import deploy
from mlscale.serve.ledger import read_live
from mlscale.serve.live import LiveStats
from mlscale.serve.release import ReleaseDecision, decide_release
from mlscale.tracking import tracking_client

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
    rollout_id = uuid.uuid4().hex[:12]
    canary = Canary(uri=challenger_uri, served_uri=challenger_served, fraction=policy.fraction,
                    sticky_header=policy.sticky_header, rollout_id=rollout_id, app_name=config.serve.app_name)
    endpoint = deploy(config, champion_served, canary=canary)
    log.info("canary %s: v%s on %.0f%% of traffic beside v%s", rollout_id, uri_version(challenger_served),
             100 * policy.fraction, uri_version(champion_served))
    decision = watch_canary(config, rollout_id, uri_version(champion_served), uri_version(challenger_served),
                            label_scale(label_of(challenger_served, config.tracking_uri)))
    return apply_release(config, decision, champion_served, challenger_served, endpoint)


def watch_canary(config: PipelineConfig, rollout_id: str, champion: str, challenger: str,
                 scale: float) -> ReleaseDecision:
    """Read the live numbers every check_interval_s and judge them until the policy decides."""
    policy, started, last_shown = config.serve.canary, time.monotonic(), 0.0
    while True:
        time.sleep(policy.check_interval_s)
        live = read_live(config.serve.app_name, rollout_id)
        elapsed = time.monotonic() - started
        decision = decide_release(policy, champion, challenger, live.get(champion, LiveStats()),
                                  live.get(challenger, LiveStats()), scale, elapsed)
        if decision.final:
            return decision
        if elapsed - last_shown >= 10:
            last_shown = elapsed
            log.info("canary %s after %.0f s: %s", rollout_id, elapsed, "; ".join(decision.reasons))


def apply_release(config: PipelineConfig, decision: ReleaseDecision, champion_served: str,
                  challenger_served: str, endpoint: str) -> Release:
    """Carry out a release decision, then record it (a rollback is applied before anything else can fail)."""
    if decision.action == "rollback":
        deploy(config, champion_served)
        serving = decision.champion_version
    elif decision.action == "promote":
        promotion = PromotionDecision(
            model=config.tracking.registered_model, alias=config.tracking.alias,
            challenger_version=decision.challenger_version, champion_version=decision.champion_version,
            promote=True, policy="canary", metric="live_error_rate", mode="min",
            challenger_value=decision.challenger.get("error_rate"), champion_value=decision.champion.get("error_rate"),
            delta=None, behaviour_passed=True, reason="canary: " + "; ".join(decision.reasons))
        try:
            apply_decision(promotion, config.tracking_uri)
        except PromotionConflict:
            deploy(config, champion_served)
            record_release(config, decision, "conflict: the alias moved during the canary; champion served alone")
            raise
        deploy(config, challenger_served)
        serving = decision.challenger_version
    else:  # hold: the canary keeps running until someone promotes or rolls back
        serving = f"{decision.champion_version}+{decision.challenger_version}"
    return Release(decision, endpoint, serving, str(record_release(config, decision)))


def release_log_path(config: PipelineConfig) -> Path:
    return config.storage.root_path / "releases" / f"{config.name}.log"


def record_release(config: PipelineConfig, decision: ReleaseDecision, note: str = "") -> Path:
    """The decision as tags on the challenger version and the registered model, and a line in the release log."""
    record = {**decision.to_dict(), "note": note, "by": who(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps(record, sort_keys=True, default=str)
    client = tracking_client(config.tracking_uri)
    model = config.tracking.registered_model
    client.set_model_version_tag(model, decision.challenger_version, RELEASE_TAG, text)
    client.set_model_version_tag(model, decision.challenger_version, f"{RELEASE_TAG}.action", decision.action)
    client.set_registered_model_tag(model, f"{RELEASE_TAG}.last", text)
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
