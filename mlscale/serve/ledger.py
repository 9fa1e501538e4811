"""Where replicas report their live numbers during a release: one small named actor per application.

Each replica sends its cumulative stats per version every second; the ledger keeps the latest from each replica
(so a lost or repeated report changes nothing) under the rollout they belong to, and the release watcher reads the
sum. A replica that dies takes nothing with it: what it reported stays counted.

It also holds each canary's lease: the release watcher renews it while it judges, and every report answers with the
seconds left. A replica routes to the challenger only while the lease runs, so a watcher that dies (Ctrl-C, a stopped
or killed job, a lost driver node) or a ledger that restarts leaves the champion serving alone within the lease,
with nobody having to clean up.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from mlscale.serve.live import LiveStats

NAMESPACE = "mlscale"


class ReleaseLedger:
    def __init__(self) -> None:
        self.reports: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # rollout -> replica -> version -> stats
        self.leases: dict[str, float] = {}  # rollout -> until (this actor's monotonic clock)

    def report(self, rollout_id: str, replica: str, stats: dict[str, dict[str, Any]]) -> float:
        """Keep a replica's latest numbers; answer how many seconds the rollout's lease has left (0: none)."""
        self.reports.setdefault(rollout_id, {})[replica] = stats
        for old in list(self.reports)[:-8]:  # keep the last few rollouts only
            del self.reports[old]
        return self.lease_left(rollout_id)

    def renew(self, rollout_id: str, seconds: float) -> None:
        self.leases[rollout_id] = time.monotonic() + seconds
        for old in list(self.leases)[:-8]:
            del self.leases[old]

    def end(self, rollout_id: str | None = None) -> None:
        """End one rollout's lease, or every lease of the app (None)."""
        if rollout_id is None:
            self.leases.clear()
        else:
            self.leases.pop(rollout_id, None)

    def lease_left(self, rollout_id: str) -> float:
        return max(self.leases.get(rollout_id, 0.0) - time.monotonic(), 0.0)

    def read(self, rollout_id: str) -> dict[str, dict[str, Any]]:
        total: dict[str, LiveStats] = {}
        for per_version in self.reports.get(rollout_id, {}).values():
            for version, stats in per_version.items():
                total[version] = total.get(version, LiveStats()).merge(LiveStats.from_dict(stats))
        return {version: stats.to_dict() for version, stats in total.items()}


# applied as a call: a class decorator would hide ActorClass.options from type checkers
LedgerActor: Any = ray.remote(num_cpus=0, max_restarts=-1)(ReleaseLedger)


def ledger_name(app_name: str) -> str:
    return f"mlscale-release-{app_name}"


def release_ledger(app_name: str) -> Any:
    """The app's ledger, created on first use (detached: it outlives the job that started the release)."""
    return LedgerActor.options(name=ledger_name(app_name), namespace=NAMESPACE, get_if_exists=True,
                                 lifetime="detached").remote()


def renew_lease(app_name: str, rollout_id: str, seconds: float) -> None:
    ray.get(release_ledger(app_name).renew.remote(rollout_id, seconds), timeout=30)


def end_leases(app_name: str, rollout_id: str | None = None) -> None:
    """Take the challenger's share away now (one rollout, or every canary of the app)."""
    ray.get(release_ledger(app_name).end.remote(rollout_id), timeout=30)


def read_live(app_name: str, rollout_id: str) -> dict[str, LiveStats]:
    stats = ray.get(release_ledger(app_name).read.remote(rollout_id))
    return {version: LiveStats.from_dict(data) for version, data in stats.items()}
