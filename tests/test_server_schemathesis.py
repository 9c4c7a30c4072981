"""schemathesis over the server's own /openapi.json: generated requests for every operation, bounded in
number, and no answer is a 5xx (client mistakes are 4xx, the rest works). About 50 s on 2 cores: ~15
generated examples per operation plus schemathesis's boundary-value (coverage) cases, ~0.7 s per spoken one.
It found the sampling bounds in schema.py (a temperature of 5e-324 made T3's batch NaN)."""

from __future__ import annotations

import pytest

from faster_chatterbox.server import ServerOptions
from server_helpers import LiveServer

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.schemathesis


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    # short inputs keep the generated syntheses short (random weights speak to their token budget)
    options = ServerOptions(voices_dir=tmp_path_factory.mktemp("voices"), max_input_chars=40,
                            max_upload_bytes=200_000, request_timeout=30)
    with LiveServer(options=options) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    body = case.body
    if case.path == "/v1/audio/speech" and isinstance(body, dict):
        # random weights speak to their token budget: cap a valid request's tokens to keep the run short
        tokens = body.get("max_new_tokens")
        if tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 30):
            body["max_new_tokens"] = 30
    case.call_and_validate(checks=[not_a_server_error], timeout=60)


def test_the_generated_requests_reached_the_model(live):
    """Not only refusals: some generated speech requests were spoken (the schema's examples are valid)."""
    assert live.metric("faster_chatterbox_requests_total", route="/v1/audio/speech", status="200") > 0
    assert live.metric("faster_chatterbox_requests_total", route="/v1/audio/speech", status="400") > 0
