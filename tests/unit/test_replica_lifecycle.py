"""A replica across rollouts, through its own reconfigure (Serve's update path) with no Ray: Serve restarts a replica
whose health check fails, so one with no model must fail it; a new version whose bundle does not load leaves the old
one answering; a version's cached answers never answer for another version."""

from __future__ import annotations

import json

import pytest

from mlscale.serve import app as replica_module
from mlscale.serve.app import ModelServerReplica
from mlscale.serve.rollout import Rollout
from tests.unit.test_bundle import make_bundle
from tests.unit.test_canary_accounting import FakeRequest, records, send


@pytest.fixture
def registry(monkeypatch):
    """Versions 1 and 2 load (two bundles trained alike, as two registered versions); version 3's download fails."""
    bundles = {"models:/m/1": make_bundle(), "models:/m/2": make_bundle()}

    def load(served_uri: str, tracking_uri, cache):
        if served_uri not in bundles:
            raise OSError(f"{served_uri}: the artifact store did not answer")
        return bundles[served_uri]

    monkeypatch.setattr(replica_module, "load_pinned_bundle", load)
    return bundles


def rollout(version: str, **settings) -> dict:
    return Rollout(uri="models:/m@champion", served_uri=f"models:/m/{version}", **settings).model_dump()


def unbatched(replica: ModelServerReplica) -> ModelServerReplica:
    async def predict(item):  # @serve.batch needs a replica context; what it calls is the same
        return replica._predict_items([item])[0]

    predict.set_max_batch_size = predict.set_batch_wait_timeout_s = lambda value: None  # what reconfigure sets
    replica.predict_batch = predict
    return replica


def served_version(replica: ModelServerReplica, body: list[dict]) -> tuple[int, str]:
    import asyncio

    response = asyncio.run(replica.predict(FakeRequest(body, {"content-type": "application/json"})))
    return response.status_code, json.loads(response.body)["model"]["version"]


def test_a_replica_without_a_model_fails_its_health_check_until_one_is_loaded(registry):
    replica = ModelServerReplica()
    with pytest.raises(RuntimeError, match="no model loaded"):
        replica.check_health()  # Serve replaces it instead of sending it traffic
    replica.reconfigure(rollout("1"))
    replica.check_health()
    assert unbatched(replica) and send(replica, [(records(2), {"content-type": "application/json"})]) == [200]


def test_a_version_that_fails_to_load_leaves_the_old_one_answering(registry):
    replica = ModelServerReplica()
    replica.reconfigure(rollout("1"))
    unbatched(replica)
    with pytest.raises(OSError, match="models:/m/3"):
        replica.reconfigure(rollout("3"))
    replica.check_health()
    assert served_version(replica, records(3)) == (200, "1")  # nothing half-swapped: still v1, whole


def test_the_cache_is_per_version_and_kept_only_while_the_version_and_its_settings_are(registry):
    cached = {"cache_entries": 100, "cache_ttl_s": 60.0}
    replica = ModelServerReplica()
    replica.reconfigure(rollout("1", **cached))
    unbatched(replica)
    body = records(4)
    assert served_version(replica, body) == (200, "1")
    first = replica.served.cache
    assert (first.hits, first.misses, len(first)) == (0, 1, 4)  # requests counted, records kept
    replica.reconfigure(rollout("1", **{**cached, "max_batch_size": 8}))  # another setting: the cache stays
    assert replica.served.cache is first
    assert served_version(replica, body) == (200, "1") and first.hits == 1
    replica.reconfigure(rollout("2", **cached))  # a new version: v1's answers never answer for it
    assert replica.served.cache is not first and len(replica.served.cache) == 0
    assert served_version(replica, body) == (200, "2") and replica.served.cache.misses == 1
    replica.reconfigure(rollout("2", **{**cached, "cache_ttl_s": 5.0}))  # new cache settings: a new cache
    assert len(replica.served.cache) == 0
