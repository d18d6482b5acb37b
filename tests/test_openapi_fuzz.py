"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): no 5xx and no
stack traces for any generated request, responses conforming to the schema."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from editx.server.app import create_app  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                derandomize=True)


@pytest.fixture()
def app(make_engine, tmp_path):
    return create_app(make_engine(), settings=ServerSettings(data_dir=tmp_path / "data", max_request_bytes=200_000,
                                                          warm_builtin_voices=False))  # /readyz: 503 while warming


def _check(case) -> None:
    from schemathesis.checks import not_a_server_error

    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text


def test_api_survives_schema_fuzzing(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    fuzzed = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/v1/cache/clear" or op.method.upper() == "DELETE":
            continue  # destructive; covered by the contract tests
        given(op.as_strategy())(FUZZ(lambda case: _check(case)))()  # a fresh function per operation
        fuzzed.append(f"{op.method.upper()} {op.path}")
    assert {"POST /v1/audio/speech", "POST /v1/voices", "GET /v1/voices", "POST /v1/audio/edits"} <= set(fuzzed)
