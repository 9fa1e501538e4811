"""Every release step ends: the canary stage with its outside world replaced (Serve, the ledger, the registry), and
a failure or an interruption raised at each step. Whatever happens after the canary is deployed, what the champion
alias names serves alone again and the release log says so; before it, nothing is deployed."""

from __future__ import annotations

import pytest

from mlscale.config import load_config
from mlscale.errors import PromotionConflict
from mlscale.serve.live import LiveStats
from mlscale.serve.release import P99_MIN_REQUESTS


def healthy(requests: int = P99_MIN_REQUESTS) -> LiveStats:
    stats = LiveStats()
    for _ in range(requests):
        stats.request(0.004, failed=False)
        stats.predicted([0.3])
        stats.compared([0.3], [0.3])
    return stats


class World:
    """The canary stage's outside world, recording what was deployed and what the ledger was told."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: str | None) -> None:
        from mlscale.stages import release as stage

        self.fail, self.deployed, self.leases = fail, [], []
        self.aliases = {"champion": "1"}
        monkeypatch.setattr(stage, "pinned_uri", self.pinned)
        monkeypatch.setattr(stage, "label_of", self.label_of)
        monkeypatch.setattr(stage, "deploy", self.deploy)
        monkeypatch.setattr(stage, "renew_lease", lambda app, rollout, seconds: self.leases.append(seconds))
        monkeypatch.setattr(stage, "end_leases", lambda app, rollout=None: self.leases.append("ended"))
        monkeypatch.setattr(stage, "read_live", self.read_live)
        monkeypatch.setattr(stage, "apply_decision", self.apply_decision)
        monkeypatch.setattr(stage, "tracking_client", self.tracking_client)

    def pinned(self, uri: str, tracking_uri: str) -> str:
        if uri.endswith("@champion"):
            return f"models:/m/{self.aliases['champion']}"
        return uri

    def label_of(self, uri: str, tracking_uri: str) -> dict:
        if self.fail == "label":
            raise ConnectionError("MLflow is unreachable")
        return {"task": "classification"}

    def deploy(self, config, uri: str, canary=None) -> str:
        if canary is not None and self.fail == "deploy":
            raise RuntimeError("Serve refused the canary")
        self.deployed.append((uri, canary is not None))
        return "http://127.0.0.1:8000/x/predict"

    def read_live(self, app: str, rollout: str) -> dict[str, LiveStats]:
        if self.fail == "interrupt":
            raise KeyboardInterrupt
        if self.fail == "exit":
            raise SystemExit(143)  # a stopped job's SIGTERM, as the job entry point turns it into
        return {"1": healthy(), "2": healthy()}

    def apply_decision(self, decision, tracking_uri: str) -> bool:
        if self.fail == "conflict":
            self.aliases["champion"] = "3"  # another writer promoted v3 meanwhile
            raise PromotionConflict("the alias moved")
        self.aliases["champion"] = decision.challenger_version
        return True

    def tracking_client(self, tracking_uri: str):
        if self.fail in ("record", "interrupt", "conflict"):  # the registry down as well, for the abort's record
            raise ConnectionError("MLflow is unreachable")

        class Client:
            def __getattr__(self, name):
                return lambda *args, **kwargs: None

        return Client()


@pytest.fixture
def config(tmp_path):
    return load_config("flights-small", {
        "storage.root": str(tmp_path), "tracking.registered_model": "m",
        "serve.canary.min_requests": 1, "serve.canary.min_paired_records": 1, "serve.canary.check_interval_s": 0.01,
        "serve.canary.lease_s": 2.0})


def last_line(config) -> str:
    from mlscale.stages.release import release_log_path

    return release_log_path(config).read_text().splitlines()[-1]


@pytest.mark.parametrize(("fail", "raised", "serving"), [
    ("deploy", RuntimeError, "models:/m/1"),
    ("interrupt", KeyboardInterrupt, "models:/m/1"),
    ("exit", SystemExit, "models:/m/1"),
    ("conflict", PromotionConflict, "models:/m/3"),  # what the alias names now, not the pinned old champion
])
def test_a_canary_interrupted_at_any_step_serves_the_champion_alone_and_says_so(monkeypatch, config, fail, raised,
                                                                               serving):
    from mlscale.stages.release import canary_stage

    world = World(monkeypatch, fail)
    with pytest.raises(raised):
        canary_stage(config, "2")
    assert world.deployed[-1] == (serving, False)
    assert "ended" in world.leases
    line = last_line(config)
    assert line.split()[1] == "ABORT" and f"v{serving.rsplit('/', 1)[1]} serves alone" in line


def test_nothing_is_deployed_when_the_label_cannot_be_read(monkeypatch, config):
    from mlscale.stages.release import canary_stage

    world = World(monkeypatch, "label")
    with pytest.raises(ConnectionError):
        canary_stage(config, "2")
    assert world.deployed == []


def test_a_registry_down_at_the_record_still_ends_with_the_champion_and_a_log_line(monkeypatch, config):
    """A promotion whose tags cannot be written: the alias moved, so the new champion serves alone."""
    from mlscale.stages.release import canary_stage

    world = World(monkeypatch, "record")
    with pytest.raises(ConnectionError):
        canary_stage(config, "2")
    assert world.deployed[-1] == ("models:/m/2", False)
    assert "ABORT" in last_line(config)


def test_a_healthy_canary_renews_its_lease_each_check_and_a_held_one_for_its_timeout(monkeypatch, config):
    from mlscale.stages.release import canary_stage

    world = World(monkeypatch, None)
    release = canary_stage(config, "2")
    assert release.decision.action == "promote" and world.deployed[-1] == ("models:/m/2", False)
    assert world.leases[:2] == [2.0, 2.0]
    held = config.model_copy(update={"serve": config.serve.model_copy(update={
        "canary": config.serve.canary.model_copy(update={"auto_promote": False})})})
    world = World(monkeypatch, None)
    assert canary_stage(held, "2").decision.action == "hold"
    assert world.leases[-1] == held.serve.canary.timeout_s and world.deployed[-1] == ("models:/m/1", True)
