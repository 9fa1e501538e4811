"""Real HTTP requests to the deployed service: good records get probabilities, bad ones a 4xx naming the field."""

import json
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.data.records import json_value
from tests.unit.test_requests import JSON_VALUES  # the parser's own fuzz values, sent over HTTP

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(pipeline_result):
    config, result = pipeline_result
    rows = result.prepared.read("test").limit(5).take_all()
    records = [{k: json_value(v) for k, v in row.items()} for row in rows]
    return result.endpoint, records


def test_one_record_and_many(service):
    endpoint, records = service
    one = requests.post(endpoint, json=records[0], timeout=30)
    assert one.status_code == 200, one.text
    assert len(one.json()["predictions"]) == 1
    many = requests.post(endpoint, json=records, timeout=30)
    assert len(many.json()["predictions"]) == len(records)
    assert all(0.0 < p < 1.0 for p in many.json()["predictions"])
    wrapped = requests.post(endpoint, json={"records": records}, timeout=30)
    assert wrapped.json()["predictions"] == many.json()["predictions"]
    assert many.json()["model"]["uri"].endswith("@champion")
    model = many.json()["model"]  # the alias was resolved once, at deploy: every replica serves that version
    assert model["version"].isdigit() and model["served_uri"].endswith(f"/{model['version']}")


def test_missing_optional_weather_is_fine(service):
    endpoint, records = service
    record = {k: v for k, v in records[0].items() if k not in ("temp", "visib", "precip")}
    assert requests.post(endpoint, json=record, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dep_delay": "late"}, "dep_delay"),
        ({"month": 13}, "month"),
        ({"origin": "BOS"}, "origin"),
        ({"carrier": None}, "carrier"),
        ({"distance": -5}, "distance"),
        ({"dest": "new york"}, "dest"),
    ],
)
def test_malformed_record_is_422_naming_the_field(service, change, field):
    endpoint, records = service
    bad = {**records[1], **change}
    response = requests.post(endpoint, json=[records[0], bad], timeout=30)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert [d["field"] for d in detail] == [field]
    assert detail[0]["loc"][:2] == ["body", 1]


def test_missing_required_field_is_422(service):
    endpoint, records = service
    record = {k: v for k, v in records[0].items() if k != "sched_dep_time"}
    response = requests.post(endpoint, json=record, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "sched_dep_time"


@pytest.mark.parametrize("body", [b"{not json", b"42", b"[]", b"\xff\xfe", b'{"dep_delay": NaN}',
                                  b'[{"dep_delay": Infinity}]', b"[" * 50_000, b" " * (9 * 2**20)])
def test_bodies_that_are_not_records_are_4xx(service, body):
    endpoint, _ = service
    response = requests.post(endpoint, data=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, (body, response.status_code, response.text)


def test_schema_and_health(service, pipeline_result):
    endpoint, _ = service
    base = endpoint.rsplit("/", 1)[0]
    # no cache, no canary, no prediction log configured: the status, the version served, and which replica says so
    health = requests.get(f"{base}/health", timeout=30).json()
    assert health.keys() == {"status", "version", "replica", "answered"} and health["answered"] >= 0
    assert (health["status"], health["version"]) == ("ok", pipeline_result[1].trained.version)
    names = {spec["name"] for spec in requests.get(f"{base}/schema", timeout=30).json()["input_schema"]}
    assert {"dep_delay", "carrier", "origin", "dest", "sched_dep_time"} <= names


def test_app_builder_for_config_files(pipeline_result):
    from pydantic import ValidationError
    from ray import serve

    from mlscale.serve.build import app_builder

    config, result = pipeline_result
    args = {"model_uri": result.trained.model_uri, "tracking_uri": config.tracking_uri, "num_replicas": 2}
    assert isinstance(app_builder(args), serve.Application)
    with pytest.raises(ValidationError, match="max_batch_size"):
        app_builder({**args, "max_batch_size": 0})


def test_two_replicas_the_record_limit_and_api_keys(pipeline_result):
    """A second app from the same bundle, with API keys: 401 without a valid key (/health open), two model replicas
    share concurrent load, and a request above serve.max_records_per_request is refused with a 422 saying the limit."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from mlscale.data.records import held_out_records
    from mlscale.stages.deploy import deploy_stage

    config, result = pipeline_result
    config = config.model_copy(update={"serve": config.serve.model_copy(update={
        "app_name": "two-replicas", "route_prefix": "/two-replicas", "num_replicas": 2,
        "max_records_per_request": 5, "api_keys_env": "MLSCALE_TEST_API_KEYS"})})
    os.environ["MLSCALE_TEST_API_KEYS"] = "key-a,key-b"
    try:
        endpoint = deploy_stage(config, result.trained.version_uri)
    finally:
        del os.environ["MLSCALE_TEST_API_KEYS"]  # read once, where the app was built
    key = {"Authorization": "Bearer key-b"}
    try:
        records = held_out_records(result.prepared.read("test"), 6)
        base = endpoint.rsplit("/", 1)[0]
        assert requests.post(endpoint, json=records[:1], timeout=30).status_code == 401
        assert requests.post(endpoint, json=records[:1], headers={"Authorization": "Bearer key-c"},
                             timeout=30).status_code == 401
        assert requests.get(f"{base}/schema", timeout=30).status_code == 401  # lineage only for key holders
        assert requests.get(f"{base}/health", timeout=30).status_code == 200
        refused = requests.post(endpoint, json=records, headers=key, timeout=30)
        assert refused.status_code == 422 and "expected 1 to 5 records, got 6" in refused.text
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.post(endpoint, json=records[:5], headers=key, timeout=60),
                                    range(24)))
        assert {answer.status_code for answer in answers} == {200}
        first = answers[0].json()["predictions"]
        for answer in answers:  # every replica, whatever the batch it was merged into, gives the same answer
            assert answer.json()["predictions"] == pytest.approx(first, abs=1e-6)
        model = serve.status().applications["two-replicas"].deployments["ModelServer"]
        assert model.replica_states.get("RUNNING") == 2
        answered: dict[str, int] = {}  # each replica's own count, as its /health reports it
        deadline = time.time() + 60  # concurrent probes: the router spreads them as it spread the predictions
        while len(answered) < 2 and time.time() < deadline:
            with ThreadPoolExecutor(4) as pool:
                for health in pool.map(lambda _: requests.get(f"{base}/health", timeout=30).json(), range(8)):
                    answered[health["replica"]] = health["answered"]
        assert len(answered) == 2 and all(answered.values()), answered  # both replicas served predictions
        assert sum(answered.values()) >= len(answers)
        from mlscale.errors import ConfigError

        open_config = config.model_copy(update={"serve": config.serve.model_copy(update={"api_keys_env": None})})
        with pytest.raises(ConfigError, match="is running with API keys and this config has none"):
            deploy_stage(open_config, result.trained.version_uri)  # it would open the keyed endpoint
        assert requests.post(endpoint, json=records[:1], timeout=30).status_code == 401  # still keyed
    finally:
        serve.delete("two-replicas")


def test_openapi_and_docs_show_the_bundles_fields(service, pipeline_result):
    from mlscale.serve.requests import record_name

    config, _ = pipeline_result
    endpoint, records = service
    base = endpoint.rsplit("/", 1)[0]
    document = requests.get(f"{base}/openapi.json", timeout=30).json()
    record = record_name(config.name)
    fields = document["components"]["schemas"][record]["properties"]
    inputs = {spec["name"] for spec in requests.get(f"{base}/schema", timeout=30).json()["input_schema"]}
    assert inputs == set(fields)  # every input column, typed from the bundle's schema
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": f"#/components/schemas/{record}"} in body["oneOf"]
    responses = document["paths"]["/predict"]["post"]["responses"]
    assert {"200", "413", "422", "503"} <= set(responses)
    assert "PredictResponse" in document["components"]["schemas"]
    docs = requests.get(f"{base}/docs", timeout=30)
    assert docs.status_code == 200 and "openapi.json" in docs.text


CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", "multipart/form-data; boundary=x", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=400), JSON_VALUES.map(lambda value: json.dumps(value).encode()),
                      JSON_VALUES.map(lambda value: json.dumps(value).encode("utf-16"))),
       content_type=CONTENT_TYPES)
def test_fuzzed_bodies_and_encodings_never_get_a_5xx(service, body, content_type):
    endpoint, _ = service
    answer = requests.post(endpoint, data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])
    assert len(answer.content) < 20_000
    answer.json()  # a JSON body, whatever the status


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["dep_delay", "carrier", "origin", "month", "distance", "temp"]), value=JSON_VALUES)
def test_a_fuzzed_field_in_a_real_record_gets_predictions_or_a_4xx(service, field, value):
    endpoint, records = service
    answer = requests.post(endpoint, data=json.dumps([{**records[0], field: value}, records[1]]),
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code in (200, 400, 422), (field, value, answer.text[:300])
    if answer.status_code == 422:
        assert field in answer.text
    if answer.status_code == 400:  # NaN or Infinity: Python writes them, JSON has no such numbers
        assert "not a number JSON allows" in answer.text


def test_a_body_above_the_limit_is_413_before_parsing(service, pipeline_result):
    config, _ = pipeline_result
    endpoint, _ = service
    too_big = b"[" + b" " * config.serve.max_body_bytes + b"]"
    answer = requests.post(endpoint, data=too_big, headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "serve.max_body_bytes" in answer.text and len(answer.content) < 1000


def test_a_chunked_body_past_the_limit_is_413_without_being_read_whole(service, pipeline_result):
    """No Content-Length (chunked transfer encoding): the replica stops reading at serve.max_body_bytes."""
    config, _ = pipeline_result
    endpoint, _ = service

    def chunks():
        yield b"["
        for _ in range(4 * config.serve.max_body_bytes // 65536):  # four times the limit, if it were all read
            yield b" " * 65536

    answer = requests.post(endpoint, data=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "serve.max_body_bytes" in answer.text


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"dep_delay": True}, 422, "dep_delay"),
    ({"carrier": "U\ud800"}, 422, "carrier"),
    ({"tailnum": "N" * 1_000_000}, 422, "tailnum"),
    ({"dep_dealy": 3.0}, 422, "dep_dealy"),
])
def test_strict_fields_over_http_are_4xx_naming_the_field_and_answered_fast(service, change, status, field):
    import time

    endpoint, records = service
    body = json.dumps([records[0], {**records[1], **change}]).encode()  # ASCII JSON: the surrogate as \ud800
    started = time.perf_counter()
    answer = requests.post(endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    elapsed = time.perf_counter() - started
    assert answer.status_code == status and answer.json()["detail"][0]["field"] == field, answer.text[:300]
    assert len(answer.content) < 4_000 and elapsed < 1.0, (len(answer.content), elapsed)


def test_a_body_not_declared_json_is_415(service):
    endpoint, records = service
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = requests.post(endpoint, data=json.dumps(records[:1]), headers=headers, timeout=30)
        assert answer.status_code == 415 and "application/json" in answer.text, (content_type, answer.text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30),
       field=st.sampled_from(["carrier", "tailnum", "origin", "dest", "month", "new_field"]))
def test_any_unicode_in_any_field_over_http_gets_predictions_or_a_4xx(service, text, field):
    endpoint, records = service
    body = json.dumps([{**records[0], field: text}]).encode()
    answer = requests.post(endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code in (200, 422), (field, text, answer.status_code, answer.text[:300])
    answer.json()
