"""Where replicas report their live numbers during a release: one small named actor per application.

Each replica sends its cumulative stats per version every second; the ledger keeps the latest from each replica
(so a lost or repeated report changes nothing) under the rollout they belong to, and the release watcher reads the
sum. A replica that dies takes nothing with it: what it reported stays counted.
"""

from __future__ import annotations

from typing import Any

import ray

from mlscale.serve.live import LiveStats

NAMESPACE = "mlscale"


class ReleaseLedger:
    def __init__(self) -> None:
        self.reports: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}  # rollout -> replica -> version -> stats

    def report(self, rollout_id: str, replica: str, stats: dict[str, dict[str, Any]]) -> None:
        self.reports.setdefault(rollout_id, {})[replica] = stats
        for old in list(self.reports)[:-8]:  # keep the last few rollouts only
            del self.reports[old]

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


def read_live(app_name: str, rollout_id: str) -> dict[str, LiveStats]:
    stats = ray.get(release_ledger(app_name).read.remote(rollout_id))
    return {version: LiveStats.from_dict(data) for version, data in stats.items()}
