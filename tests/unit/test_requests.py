"""Every body a client can send gets records or a small 4xx that names the problem: never a 5xx, never a response
that cannot be rendered as JSON, never an answer larger than a few kilobytes."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.schema import ColumnSpec
from mlscale.serve.requests import MAX_ERRORS, RequestParser, RequestRejected

SCHEMA = [
    ColumnSpec(name="dep_delay", dtype="float", min=-120, max=1500),
    ColumnSpec(name="carrier", dtype="str", nullable=False, pattern="[A-Z0-9]{2}"),
    ColumnSpec(name="origin", dtype="str", allowed=["EWR", "JFK", "LGA"]),
    ColumnSpec(name="month", dtype="int", nullable=False, min=1, max=12),
]
PARSER = RequestParser(SCHEMA, max_records=50, max_body_bytes=64 * 1024, record_name="FlightsRecord")
GOOD = {"dep_delay": 3.5, "carrier": "UA", "origin": "EWR", "month": 7}


def rejected(body: bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        PARSER.parse(body)
    return caught.value


def test_good_bodies_in_every_shape():
    for body in (GOOD, [GOOD, GOOD], {"records": [GOOD]}):
        records = PARSER.parse(json.dumps(body).encode())
        assert records[0] == GOOD
    assert PARSER.parse(b'{"carrier": "UA", "month": 1}') == [{"dep_delay": None, "carrier": "UA", "origin": None,
                                                             "month": 1}]


@pytest.mark.parametrize(("body", "status", "says"), [
    (b'{"dep_delay": NaN, "carrier": "UA", "month": 1}', 400, "NaN is not a number JSON allows"),
    (b'{"dep_delay": Infinity, "carrier": "UA", "month": 1}', 400, "Infinity"),
    (b"[" * 50_000, 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b'"a string"', 422, "got str"),
    (b"[]", 422, "expected 1 to 50 records, got 0"),
    (json.dumps([GOOD] * 51).encode(), 422, "got 51"),
    (json.dumps({**GOOD, "dep_delay": 1e308 * 10}).encode(), 400, "Infinity"),
    (b" " * (64 * 1024 + 1), 413, "above the limit of 65,536"),
])
def test_malformed_bodies_are_4xx_naming_the_problem(body, status, says):
    error = rejected(body)
    assert error.status == status and says in json.dumps(error.detail)


def test_a_large_invalid_body_gets_a_small_answer():
    bad = [{**GOOD, "month": 13, "carrier": "x" * 500}] * 50
    error = rejected(json.dumps(bad).encode())
    text = json.dumps(error.detail, allow_nan=False)
    assert error.status == 422 and len(error.detail) == MAX_ERRORS + 1 and "more errors" in text
    assert len(text) < 8_000 < len(json.dumps(bad))


def test_content_length_is_checked_before_the_body_is_read():
    with pytest.raises(RequestRejected) as caught:
        PARSER.check_length(str(10 * 2**20))
    assert caught.value.status == 413
    PARSER.check_length("100")
    PARSER.check_length(None)
    PARSER.check_length("not a number")  # left to the body's own length check


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["dep_delay", "carrier", "origin", "month", "records", "x"]) | st.text(max_size=8),
        children, max_size=6),
    max_leaves=40,
)


def check_outcome(body: bytes) -> None:
    try:
        records = PARSER.parse(body)
    except RequestRejected as error:
        assert 400 <= error.status < 500
        text = json.dumps({"detail": error.detail}, allow_nan=False)  # renderable
        assert len(text) < 16_000
        return
    assert 1 <= len(records) <= 50 and all(set(record) == {s.name for s in SCHEMA} for record in records)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES)
def test_any_json_value_gets_records_or_a_4xx(value):
    check_outcome(json.dumps(value).encode())  # NaN and Infinity included: Python writes them as literals


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_get_records_or_a_4xx(body):
    check_outcome(body)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "dep_delay": st.none() | st.floats() | st.integers() | st.text(max_size=5),
    "carrier": st.none() | st.text(max_size=4) | st.integers(),
    "origin": st.none() | st.sampled_from(["EWR", "BOS", ""]) | st.integers(),
    "month": st.none() | st.integers(-5, 20) | st.floats() | st.booleans(),
}))
def test_records_near_the_schema_get_records_or_a_4xx(record):
    check_outcome(json.dumps([record, GOOD]).encode())


def test_one_poisoned_record_fails_only_its_own_request(tmp_path):
    """Three requests merged into one batch (what @serve.batch hands the replica); the bundle cannot transform one
    record: the other two requests get their predictions, the poisoned one a TransformFailed naming the reason."""
    import numpy as np

    from mlscale.registry.store import load_bundle
    from mlscale.serve.batching import TransformFailed, predict_requests
    from tests.unit.test_bundle import make_bundle
    from tests.unit.test_featureset import sample_table

    folder = make_bundle().save(tmp_path / "bundle")
    bundle = load_bundle(str(folder))
    honest = bundle.predict_records

    def predict(records):
        if any(record.get("carrier") == "POISON" for record in records):
            raise ValueError("cannot transform carrier POISON")
        return honest(records)

    bundle.predict_records = predict
    rows = sample_table(6).to_pylist()
    requests = [rows[:2], [*rows[2:3], {**rows[3], "carrier": "POISON"}], rows[4:]]

    first, poisoned, last = predict_requests(bundle, requests)
    np.testing.assert_allclose(first, honest(rows[:2]), atol=1e-6)
    np.testing.assert_allclose(last, honest(rows[4:]), atol=1e-6)
    assert isinstance(poisoned, TransformFailed) and "cannot transform carrier POISON" in poisoned.reason


def test_api_keys_are_kept_as_digests_and_compared_whole(monkeypatch):
    from mlscale.config import ServeConfig
    from mlscale.errors import ConfigError
    from mlscale.serve.build import api_key_digests
    from mlscale.serve.requests import authorized, key_digest

    assert authorized(None, ()) and authorized("anything", ())  # no keys configured: open
    monkeypatch.setenv("MLSCALE_TEST_KEYS", "k-one, k-two")
    digests = api_key_digests(ServeConfig(api_keys_env="MLSCALE_TEST_KEYS"))
    assert digests == (key_digest("k-one"), key_digest("k-two")) and "k-one" not in "".join(digests)
    assert authorized("Bearer k-two", digests) and authorized("k-one", digests)
    for header in (None, "", "Bearer", "Bearer k-on", "Bearer k-one2", "Basic k-one"):
        assert not authorized(header, digests), header
    monkeypatch.setenv("MLSCALE_TEST_KEYS", " , ")
    with pytest.raises(ConfigError, match="holds no keys"):
        api_key_digests(ServeConfig(api_keys_env="MLSCALE_TEST_KEYS"))


def test_api_keys_from_a_file_join_those_from_the_environment(monkeypatch, tmp_path):
    from mlscale.config import ServeConfig
    from mlscale.errors import ConfigError
    from mlscale.serve.build import api_key_digests
    from mlscale.serve.requests import key_digest

    keys = tmp_path / "keys"
    keys.write_text("# rotated 2026-11\nk-file\n\n  k-two  \n")
    monkeypatch.setenv("MLSCALE_TEST_KEYS", "k-one,k-two")
    digests = api_key_digests(ServeConfig(api_keys_env="MLSCALE_TEST_KEYS", api_keys_file=str(keys)))
    assert digests == (key_digest("k-one"), key_digest("k-two"), key_digest("k-file"))
    keys.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        api_key_digests(ServeConfig(api_keys_file=str(keys)))
    with pytest.raises(ConfigError, match="cannot be read"):
        api_key_digests(ServeConfig(api_keys_file=str(tmp_path / "missing")))


def test_a_body_not_declared_json_is_415_and_json_types_with_parameters_pass():
    from mlscale.serve.requests import check_content_type

    for accepted in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                     "application/problem+json"):
        check_content_type(accepted)
    for refused in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                    "text/json+plain", "application/jsonx"):
        with pytest.raises(RequestRejected) as caught:
            check_content_type(refused)
        assert caught.value.status == 415 and caught.value.detail[0]["loc"] == ["header", "content-type"]


def test_a_chunked_body_is_read_only_up_to_the_limit():
    import asyncio

    from mlscale.serve.requests import read_body

    pulled = []

    async def chunks(count: int, size: int):
        for index in range(count):
            pulled.append(index)
            yield b"x" * size

    assert asyncio.run(read_body(chunks(4, 100), 400)) == b"x" * 400
    pulled.clear()
    with pytest.raises(RequestRejected) as caught:
        asyncio.run(read_body(chunks(10_000, 1024), 64 * 1024))
    assert caught.value.status == 413 and "more than 65,536 bytes" in caught.value.detail[0]["msg"]
    assert len(pulled) == 65  # it stopped at the first chunk past the limit, not at the end of the stream


def test_an_unknown_field_is_a_422_naming_it_unless_the_dataset_declares_it():
    lenient = RequestParser(SCHEMA, 50, 64 * 1024, unknown_fields="ignore")
    passing = RequestParser(SCHEMA, 50, 64 * 1024, passthrough=("arr_delay",))
    body = json.dumps([GOOD, {**GOOD, "dep_dealy": 3.0}]).encode()
    error = rejected(body)
    assert error.status == 422 and [d["field"] for d in error.detail] == ["dep_dealy"]
    assert error.detail[0]["loc"] == ["body", 1, "dep_dealy"] and "not a field of the input schema" in error.detail[0][
        "msg"]
    assert lenient.parse(body) == [GOOD, GOOD]
    assert passing.parse(json.dumps({**GOOD, "arr_delay": 31.0}).encode()) == [GOOD]


@pytest.mark.parametrize(("field", "value"), [("dep_delay", True), ("month", False), ("carrier", "U\ud800"),
                                              ("carrier", "x" * 2000)])
def test_booleans_for_numbers_lone_surrogates_and_long_text_are_422_and_render(field, value):
    from mlscale.serve.requests import rejection

    error = rejected(json.dumps({**GOOD, field: value}).encode())
    assert error.status == 422 and error.detail[0]["field"] == field
    response = rejection(error.status, error.detail)
    assert response.status_code == 422 and json.loads(response.body)["detail"][0]["field"] == field
    assert len(response.body) < 2_000


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40),
       st.sampled_from(["carrier", "origin", "month", "dep_delay", "key"]))
def test_any_unicode_text_in_any_place_gets_records_or_a_4xx_that_renders(text, place):
    """Lone surrogates included: they are valid JSON escapes; the answer must still be encodable."""
    from mlscale.serve.requests import rejection

    for body in (json.dumps({**GOOD, place: text}).encode(), json.dumps({**GOOD, text: 1}).encode()):
        try:
            PARSER.parse(body)
        except RequestRejected as error:
            assert 400 <= error.status < 500
            assert json.loads(rejection(error.status, error.detail).body)["detail"]


def test_every_route_but_health_asks_for_a_key():
    """The replica's route table: each route other than the open ones answers 401 without a key (read from the
    routes FastAPI really has, so a route added later without the check fails here)."""
    import asyncio

    from starlette.requests import Request

    from mlscale.serve.app import OPEN_ROUTES, ModelServerReplica, ServedModel, api
    from mlscale.serve.requests import key_digest

    def flattened(routes):  # Serve's ingress moves the class's routes into an included router
        for route in routes:
            yield from flattened(route.original_router.routes) if hasattr(route, "original_router") else [route]

    replica = ModelServerReplica((key_digest("k"),))
    replica.served = ServedModel(bundle=None, parser=PARSER, info={"version": "1"},  # type: ignore[arg-type]
                                 info_json=b"{}")
    routes = {route.path: route for route in flattened(api.routes)}
    assert {"/predict", "/schema", "/health", "/openapi.json", "/docs"} <= set(routes)
    for path, route in routes.items():
        if path in OPEN_ROUTES:
            continue
        method = sorted(route.methods)[0]
        request = Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": b"",
                           "root_path": ""})
        response = asyncio.run(route.endpoint(replica, request))
        assert response.status_code == 401, path


def test_a_record_the_model_cannot_transform_gets_no_internal_text(tmp_path):
    """The 422 for a transform failure says what happened, not the exception (the log has that)."""
    import asyncio

    from mlscale.serve.app import ModelServerReplica, ServedModel
    from mlscale.serve.batching import TransformFailed
    from mlscale.serve.requests import TRANSFORM_FAILED

    class Request:
        headers = {"content-type": "application/json"}

    replica = ModelServerReplica()
    served = ServedModel(bundle=None, parser=PARSER, info={"version": "1"}, info_json=b"{}")  # type: ignore[arg-type]
    response, outcome, _ = asyncio.run(replica._transform_failed(
        Request(), served, [GOOD], TransformFailed("KeyError: '/secret/path/state.json'")))  # type: ignore[arg-type]
    assert response.status_code == 422 and outcome == "caller"
    assert json.loads(response.body)["detail"][0]["msg"] == TRANSFORM_FAILED and b"secret" not in response.body


def test_a_graph_validates_against_every_member_and_sends_each_its_own_records():
    """Two members with different schemas: a record breaking the second member's rules is refused even though the
    first accepts it; a field only one member reads is no unknown field to the other."""
    from mlscale.serve.graph import member_parsers, validate_for_members

    wide = [*SCHEMA, ColumnSpec(name="distance", dtype="float", max=5000)]
    strict = [ColumnSpec(name="month", dtype="int", nullable=False, min=6, max=12),
              ColumnSpec(name="carrier", dtype="str", nullable=False, pattern="[A-Z0-9]{2}")]
    parsers = member_parsers([{"input_schema": [spec.model_dump() for spec in schema], "passthrough_columns": extra}
                              for schema, extra in ((wide, []), (strict, ["arr_delay"]))],
                             {"max_records": 50, "max_body_bytes": 64 * 1024, "record": "R"})
    first, second = validate_for_members(parsers, [{**GOOD, "distance": 300.0, "arr_delay": 4.0}])
    assert first == [{**GOOD, "distance": 300.0}] and second == [{"month": 7, "carrier": "UA"}]
    with pytest.raises(RequestRejected) as caught:
        validate_for_members(parsers, [{**GOOD, "month": 3}])  # the first member would take it
    assert caught.value.status == 422 and caught.value.detail[0]["field"] == "month"
    with pytest.raises(RequestRejected) as caught:
        validate_for_members(parsers, [{**GOOD, "distnce": 3.0}])
    assert caught.value.detail[0]["field"] == "distnce"
