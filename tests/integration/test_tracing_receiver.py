"""The receiver's spans beyond an accepted delivery (ingest/tracing.py, ingest/views.py,
ingest/inbound.py): an inbound call's lookup and record under its request span, and a
refusal's code on its span.

The receiver runs in a fresh Python process with tracing on, exporting to a real
OTLP/HTTP receiver (tests/otlp.py), with Redis down (a closed port)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.databases import copy_sqlite
from tests.helpers import ROOT, last_json_line, run_python
from tests.otlp import Span, otlp_sink
from tests.servers import clean_env

pytestmark = pytest.mark.slow  # the probes run as processes of their own (a tracer is per process)

# One sender trace per request.
INBOUND, BAD_JSON, UNKNOWN, NOT_POST, BOOKING = (
    f"{n}bf92f3577b34da6a3ce929d0e0e4736" for n in range(5)
)
CALCOM = ROOT / "tests/fixtures/calcom/BOOKING_CREATED.json"
SENDER_SPAN = "00f067aa0ba902b7"
# Paths no provider route matches, each in a trace of its own (method, path).
OFF_ROUTE = {
    "0af7651916cd43dd8448eb211c80319c": ("post", "/webhooks/"),
    "1af7651916cd43dd8448eb211c80319c": ("post", "/webhooks/x/extra"),
    "2af7651916cd43dd8448eb211c80319c": ("get", "/webhooks/"),
    "3af7651916cd43dd8448eb211c80319c": ("post", "/webhooks//stripe"),
    "4af7651916cd43dd8448eb211c80319c": ("post", "/webhooks/nope"),
    "5af7651916cd43dd8448eb211c80319c": ("get", "/webhooks/stripe"),
}

PROBE = f"""
import json, os
from ingest import create_app
from models import tracing


def sent_by(trace_id):
    return {{"traceparent": f"00-{{trace_id}}-{SENDER_SPAN}-01"}}


client = create_app().test_client()
ringing = {{
    "event": "call_inbound",
    "call_inbound": {{"from_number": "+4915112345678", "to_number": "+4930901820"}},
}}
answers = []
answer = client.post("/webhooks/retell", json=ringing, headers=sent_by("{INBOUND}"))
answer.close()  # recorded before the answer: the database kept it (Redis is down)
answers.append(answer.status_code)
answers.append(client.post(
    "/webhooks/standard", data=b"{{not json", content_type="application/json",
    headers={{"webhook-id": "evt_1", **sent_by("{BAD_JSON}")}},
).status_code)
answers.append(client.post("/webhooks/nope", json={{}}, headers=sent_by("{UNKNOWN}")).status_code)
answers.append(client.get("/webhooks/standard", headers=sent_by("{NOT_POST}")).status_code)
booking = json.loads(open("{CALCOM}").read())["body"]
booked = client.post("/webhooks/calcom", json=booking, headers=sent_by("{BOOKING}"))
answers.append(booked.status_code)
off_route = {{}}
for trace_id, (method, path) in {OFF_ROUTE!r}.items():
    answer = getattr(client, method)(path, headers=sent_by(trace_id))
    off_route[trace_id] = [answer.status_code, answer.get_json()["error"]["code"]]
tracing.flush()
print(json.dumps({{"answers": answers, "off_route": off_route}}))
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Probed = tuple[list[Span], list[dict[str, object]], dict[str, list[object]]]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Probed:
    """PROBE run once for the four tests that read its spans and lines: each asks
    something else of the same requests (a process each cost ~2 CPU-s)."""
    return run_probe(copy_sqlite(sqlite_template, tmp_path_factory.mktemp("probe")))


def run_probe(database_url: str) -> Probed:
    """The spans exported, the JSON log lines written, and what the off-route
    requests were answered (trace id -> [status, error code]), on ``database_url`` (a
    copy of the session's migrated SQLite file: migrating in the probe cost ~1.5 CPU-s)."""
    with otlp_sink() as sink:
        env = clean_env(
            HOOKFLEET_DATABASE_URL=database_url,
            HOOKFLEET_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
            HOOKFLEET_STANDARD_VERIFY="off",
            HOOKFLEET_RETELL_VERIFY="off",
            HOOKFLEET_CALCOM_VERIFY="off",
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
        )
        done = run_python(PROBE, env)
        assert done.returncode == 0, done.stderr[-3000:]
        report = last_json_line(done)
        assert report["answers"] == [200, 400, 404, 405, 503]
        awaited = {NOT_POST, INBOUND, *OFF_ROUTE}
        spans = sink.wait_for(lambda spans: awaited <= {s.trace_id for s in spans})
    written = (done.stdout + done.stderr).splitlines()
    logs = [json.loads(line) for line in written if line.startswith('{"')]
    logs.remove(report)  # the probe's own report line, not a log line
    return spans, logs, report["off_route"]


def test_an_inbound_calls_lookup_and_record_are_children_of_its_request_span(
    probed: Probed,
) -> None:
    spans, logs, _ = probed
    in_call = [s for s in spans if s.trace_id == INBOUND]
    (request,) = [s for s in in_call if s.name == "POST /webhooks/retell"]
    assert request.parent_id == SENDER_SPAN
    # The lookup's statement ran in the lookup thread, in the request's context.
    lookups = [s for s in spans if "db.system" in s.attributes and s.trace_id == INBOUND]
    assert lookups and all(s.parent_id == request.span_id for s in lookups)
    assert not [s for s in spans if "db.system" in s.attributes and not s.parent_id]
    # The record, before the answer, under the request too: Redis was down.
    (record,) = [s for s in in_call if s.name == "hookfleet.claim_and_enqueue"]
    assert record.parent_id == request.span_id
    assert record.status == 2 and "exception" in record.events
    (line,) = [entry for entry in logs if entry["message"] == "could not record inline event"]
    assert (line["trace_id"], line["span_id"]) == (INBOUND, record.span_id)


def test_a_refusal_names_its_code_on_the_request_span(probed: Probed) -> None:
    spans, _, _ = probed
    codes = {}
    for trace_id in (BAD_JSON, UNKNOWN, NOT_POST, BOOKING):
        (span,) = [s for s in spans if s.trace_id == trace_id and s.parent_id == SENDER_SPAN]
        codes[trace_id] = (
            span.attributes["http.response.status_code"],
            span.attributes["error.type"],
            "hookfleet.outcome" in span.attributes,
        )
    assert codes == {
        BAD_JSON: (400, "invalid_json", True),
        UNKNOWN: (404, "unknown_provider", True),
        NOT_POST: (405, "method_not_allowed", True),
        BOOKING: (503, "queue_unavailable", True),  # Redis is down
    }


def test_a_calcom_event_id_reaches_spans_without_its_attendees(probed: Probed) -> None:
    spans, logs, _ = probed
    booking = json.loads(CALCOM.read_text())["body"]
    attendee = booking["payload"]["attendees"][0]
    named = [s for s in spans if s.trace_id == BOOKING and "hookfleet.event_id" in s.attributes]
    assert {s.name for s in named} == {"POST /webhooks/calcom", "hookfleet.claim_and_enqueue"}
    for span in named:
        shown = str(span.attributes["hookfleet.event_id"])
        assert shown.startswith(f"BOOKING_CREATED:{booking['payload']['uid']}:h:")
        assert attendee["email"] not in shown and attendee["name"] not in shown
    # The log lines keep the whole id (the operator's own store, README Tracing).
    assert any(attendee["email"] in str(entry.get("event_id", "")) for entry in logs)


def test_a_refused_webhook_path_names_the_same_code_on_its_span_as_in_its_body(
    probed: Probed,
) -> None:
    spans, _, answered = probed
    on_spans = {}
    for trace_id in OFF_ROUTE:
        (span,) = [s for s in spans if s.trace_id == trace_id and s.parent_id == SENDER_SPAN]
        on_spans[trace_id] = [
            span.attributes["http.response.status_code"],
            span.attributes["error.type"],
        ]
    assert on_spans == answered
    assert {code for _, code in answered.values()} == {
        "not_found",
        "unknown_provider",
        "method_not_allowed",
    }


WARM_PROBE = f"""
import json, logging, os
from ingest import create_app, gunicorn_conf
from models import tracing

app = create_app()


class Worker:  # what gunicorn hands post_worker_init
    wsgi = app
    pid = os.getpid()
    log = logging.getLogger("gunicorn.error")


gunicorn_conf.post_worker_init(Worker())
ringing = {{
    "event": "call_inbound",
    "call_inbound": {{"from_number": "+4915112345678", "to_number": "+4930901820"}},
}}
headers = {{"traceparent": "00-{INBOUND}-{SENDER_SPAN}-01"}}
answer = app.test_client().post("/webhooks/retell", json=ringing, headers=headers)
answer.close()
tracing.flush()
print(json.dumps([answer.status_code]))
"""


def test_a_receiver_workers_boot_warm_up_makes_no_trace_of_its_own(
    tmp_path: Path, sqlite_template: Path
) -> None:
    with otlp_sink() as sink:
        env = clean_env(
            HOOKFLEET_DATABASE_URL=copy_sqlite(sqlite_template, tmp_path),
            HOOKFLEET_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
            HOOKFLEET_RETELL_VERIFY="off",
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
        )
        done = run_python(WARM_PROBE, env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert last_json_line(done) == [200]
        spans = sink.wait_for(lambda spans: INBOUND in {s.trace_id for s in spans})
    statements = [s for s in spans if "db.system" in s.attributes]
    # The inbound call's lookup is traced, under its request; the warm-up's is not.
    assert statements and all(s.trace_id == INBOUND for s in statements), statements
    assert not [s for s in spans if not s.parent_id and s.trace_id != INBOUND]
