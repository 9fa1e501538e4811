"""What a canary counts for a version, through the replica's own request path (no Ray, no HTTP server): only requests
the version answered, or failed to answer for its own reasons. Refused keys, bodies that are not records and records
no version can transform never reach the judgement."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np

from mlscale.data.records import json_value
from mlscale.serve.app import ModelServerReplica, ServedModel
from mlscale.serve.requests import RequestParser, key_digest
from mlscale.serve.rollout import Canary
from tests.unit.test_bundle import make_bundle
from tests.unit.test_featureset import sample_table

KEY = {"authorization": "Bearer k", "content-type": "application/json"}


class FakeRequest:
    """What the replica reads of a Starlette request: headers and the body stream."""

    def __init__(self, body: object, headers: dict[str, str]) -> None:
        self.headers = headers
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def stream(self):
        yield self.body


def served_model(bundle, version: str) -> ServedModel:
    parser = RequestParser(list(bundle.input_schema), 100, 2**20)
    info = {"version": version, "uri": f"models:/m/{version}", "served_uri": f"models:/m/{version}"}
    return ServedModel(bundle, parser, info, json.dumps(info).encode())


def canary_replica(challenger_bundle) -> ModelServerReplica:
    replica = ModelServerReplica((key_digest("k"),))
    replica.served = served_model(make_bundle(), "1")
    replica.challenger = served_model(challenger_bundle, "2")
    replica.canary = Canary(uri="models:/m@challenger", served_uri="models:/m/2", fraction=0.5, rollout_id="r",
                            app_name="a")
    replica._route = lambda request: replica.challenger  # every request to the challenger: it is what is judged
    replica._report_live = lambda: asyncio.sleep(3600)  # no release ledger without Ray

    async def unbatched(item):  # @serve.batch needs a replica context; what it calls is the same
        return replica._predict_items([item])[0]

    replica.predict_batch = unbatched
    return replica


def records(count: int) -> list[dict]:
    inputs = set(make_bundle().input_columns)
    return [{name: json_value(value) for name, value in row.items() if name in inputs}
            for row in sample_table(count).to_pylist()]


def send(replica: ModelServerReplica, requests: list[tuple[object, dict[str, str]]]) -> list[int]:
    async def scenario() -> list[int]:
        statuses = [(await replica.predict(FakeRequest(body, headers))).status_code for body, headers in requests]
        await asyncio.gather(*replica.shadows)  # the shadow comparisons run after each answer
        return statuses

    return asyncio.run(scenario())


def test_only_requests_the_challenger_answered_count_for_it():
    replica = canary_replica(make_bundle())
    good = records(3)
    refused = [(good, {"content-type": "application/json"})] * 5  # no key: 401
    not_records = [(b"{not json", KEY), ("a string", KEY), (good, {**KEY, "content-type": "text/plain"}),
                   ([{**good[0], "month": True}], KEY), ([{**good[0], "carier": "UA"}], KEY)]
    answered = [(good, KEY)] * 4
    statuses = send(replica, refused + not_records + answered)
    assert statuses == [401] * 5 + [400, 422, 415, 422, 422] + [200] * 4
    challenger = replica.live["2"]
    assert challenger.requests == 4 and challenger.errors == 0
    assert challenger.paired == 12  # the champion's shadow answer for each of the 4 x 3 records
    assert "1" not in replica.live  # the champion answered nothing here


def test_a_transform_failure_counts_against_a_version_only_when_the_other_version_answers():
    bundle = make_bundle()
    honest = bundle.predict_records

    def fragile(batch):  # the challenger cannot transform carrier ZZ; the champion can
        if any(record.get("carrier") == "ZZ" for record in batch):
            raise ValueError("no vocabulary for ZZ")
        return honest(batch)

    challenger = replace(bundle)
    object.__setattr__(challenger, "predict_records", fragile)
    replica = canary_replica(challenger)
    fine = [record for record in records(40) if record["carrier"] != "ZZ"][:2]
    poisoned = [{**fine[0], "carrier": "ZZ"}]
    statuses = send(replica, [(fine, KEY), (poisoned, KEY)])
    assert statuses == [200, 200]  # the caller of the failed request got the champion's answer
    assert replica.live["2"].requests == 2 and replica.live["2"].errors == 1

    def broken(batch):  # now neither version can: the records are at fault, and nobody is charged
        raise ValueError("cannot transform")

    champion = replace(bundle)
    object.__setattr__(champion, "predict_records", broken)
    replica = canary_replica(challenger)
    replica.served = served_model(champion, "1")
    assert send(replica, [(poisoned, KEY)]) == [422]
    assert "2" not in replica.live or replica.live["2"].requests == 0


def test_the_fallback_answer_is_the_champions_own():
    bundle = make_bundle()

    def failing(batch):
        raise ValueError("challenger broken")

    challenger = replace(bundle)
    object.__setattr__(challenger, "predict_records", failing)
    replica = canary_replica(challenger)
    body = records(2)

    async def one() -> dict:
        response = await replica.predict(FakeRequest(body, KEY))
        return json.loads(response.body)

    answer = asyncio.run(one())
    assert answer["model"]["version"] == "1"
    np.testing.assert_allclose(answer["predictions"], bundle.predict_records(body), atol=1e-6)


def test_the_challenger_answers_only_while_its_lease_runs(monkeypatch):
    """The watcher renews the canary's lease through the ledger; each report brings back the seconds left. Once the
    ledger says none are left (the watcher died, or it ended the canary), every request goes to the champion."""
    import time

    import mlscale.serve.app as app

    left = {"seconds": 60.0}

    class Ledger:
        class report:  # noqa: N801 - shaped like an actor method: ledger.report.remote(...)
            @staticmethod
            async def remote(rollout_id, replica, stats):
                return left["seconds"]

    monkeypatch.setattr(app, "release_ledger", lambda name: Ledger)
    monkeypatch.setattr(app, "_replica_id", lambda: "replica-1")
    monkeypatch.setattr(app, "REPORT_INTERVAL_S", 0.01)
    replica = canary_replica(make_bundle())
    del replica._route, replica._report_live  # the real routing and reporting
    body = [(records(1), KEY)]

    async def versions(count: int) -> set[str]:
        seen = set()
        for _ in range(count):
            response = await replica.predict(FakeRequest(*body[0]))
            seen.add(json.loads(response.body)["model"]["version"])
            await asyncio.sleep(0.005)
        return seen

    async def scenario() -> tuple[set[str], set[str]]:
        replica.lease_until = time.monotonic() + 60
        leased = await versions(40)
        left["seconds"] = 0.0  # the lease is over: the next report says so
        await asyncio.sleep(0.05)
        return leased, await versions(40)

    leased, lapsed = asyncio.run(scenario())
    assert leased == {"1", "2"} and lapsed == {"1"}
