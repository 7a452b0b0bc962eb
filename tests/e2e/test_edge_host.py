"""RFC 9112 section 3.2's Host rules on a real gunicorn, on both worker classes: an
HTTP/1.1 request without Host, a Host that is not ``uri-host[:port]`` and two Host lines
are answered 400 in JSON (``missing_host``, ``bad_host``) on every path the receiver
serves (the loop's plain deliveries and /healthz, gunicorn's parser for the rest, the
ops listener), counted as bad requests on a webhook path, and nothing is queued; an
HTTP/1.0 request without Host is served; an absolute-form target is routed by its
path."""

from __future__ import annotations

import json

import pytest
import redis

from tests.e2e import test_edge_matrix as matrix
from tests.e2e.test_edge_matrix import BODY, ask, code_of, delivery, ops, public, signed_head
from tests.helpers import total_queued
from tests.processes import Processes
from tests.servers import wait_until

# The edge matrix's receivers (one per worker class, tests/e2e/conftest.py), in its group.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("edge_receiver")]
web = matrix.web
queue = matrix.queue


def without_host(head: str) -> str:
    return head.replace("Host: hookfleet\r\n", "")


def with_host(head: str, *values: str) -> str:
    lines = "".join(f"Host: {value}\r\n" for value in values)
    return head.replace("Host: hookfleet\r\n", lines)


def chunked(head: str) -> bytes:
    return (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + (
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    )


# (what is sent, to which listener): an HTTP/1.1 request without Host, on each road.
MISSING = [
    (
        "a plain delivery (served in the loop)",
        "public",
        lambda: delivery(without_host(signed_head("no-host-1"))),
    ),
    (
        "a chunked delivery (gunicorn's parser)",
        "public",
        lambda: chunked(without_host(signed_head("no-host-2"))),
    ),
    (
        "HTTP/1.2, read as HTTP/1.1",
        "public",
        lambda: delivery(without_host(signed_head("no-host-3", version="HTTP/1.2"))),
    ),
    (
        "an absolute-form target",
        "public",
        lambda: delivery(
            without_host(signed_head("no-host-4", target="http://hookfleet/webhooks/standard"))
        ),
    ),
    (
        "GET /healthz (answered in the loop)",
        "public",
        lambda: b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    ),
    ("an unknown path", "public", lambda: b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n"),
    (
        "GET /metrics on the ops listener",
        "ops",
        lambda: b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    ),
]


@pytest.mark.parametrize(("sent", "listener", "raw"), MISSING, ids=[row[0] for row in MISSING])
def test_an_http_1_1_request_without_host_is_a_json_400(
    web: Processes, queue: redis.Redis, sent: str, listener: str, raw: object
) -> None:
    port = public(web) if listener == "public" else ops(web)
    line, headers, body = ask(port, raw())  # type: ignore[operator]

    assert line.startswith("HTTP/1.1 400"), (sent, line, body)
    assert code_of(body) == "missing_host"
    assert headers.get("x-request-id")
    assert total_queued(queue) == 0


def test_a_delivery_without_host_is_counted_as_a_bad_request(
    web: Processes, queue: redis.Redis
) -> None:
    def bad_requests() -> float:
        return matrix.received(web, provider="standard", outcome="bad_request")

    before = bad_requests()
    line, _, _ = ask(public(web), delivery(without_host(signed_head("no-host-counted"))))

    assert line.startswith("HTTP/1.1 400")
    wait_until(lambda: bad_requests() == before + 1, 5, "the refusal counted")


def test_an_http_1_0_request_without_host_is_served(web: Processes, queue: redis.Redis) -> None:
    head = without_host(signed_head("no-host-1.0", version="HTTP/1.0"))
    line, _, body = ask(public(web), delivery(head))
    health, _, _ = ask(public(web), b"GET /healthz HTTP/1.0\r\n\r\n")

    assert " 202 " in line, (line, body)
    assert " 200 " in health
    assert total_queued(queue) == 1


@pytest.mark.parametrize(
    "value", ["a b", "hookfleet/x", "user@hookfleet", "h:80:80", "[::1", "h:port"]
)
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_a_host_that_is_not_uri_host_and_port_is_a_json_400(
    web: Processes, queue: redis.Redis, value: str, version: str
) -> None:
    head = with_host(signed_head(f"bad-host-{value}-{version}", version=version), value)
    line, headers, body = ask(public(web), delivery(head))

    assert " 400 " in line, (line, body)
    assert code_of(body) == "bad_host"
    assert headers.get("x-request-id")
    assert total_queued(queue) == 0


@pytest.mark.parametrize(
    "values", [("a", "b"), ("hookfleet", "hookfleet")], ids=["different", "same"]
)
def test_two_host_lines_are_a_json_400(
    web: Processes, queue: redis.Redis, values: tuple[str, str]
) -> None:
    line, headers, body = ask(public(web), delivery(with_host(signed_head("two-hosts"), *values)))

    assert line.startswith("HTTP/1.1 400"), (line, body)
    assert code_of(body) == "bad_host"
    assert headers.get("connection") == "close"
    assert total_queued(queue) == 0


@pytest.mark.parametrize("value", ["", "[::1]:8000", "127.0.0.1:8000", "hookfleet.example."])
def test_a_valid_host_of_any_form_is_served(web: Processes, queue: redis.Redis, value: str) -> None:
    line, _, body = ask(public(web), delivery(with_host(signed_head(f"host-{value}"), value)))

    assert line.startswith("HTTP/1.1 202"), (line, body)
    assert total_queued(queue) == 1


def test_an_absolute_form_target_is_routed_by_its_path_whatever_the_host_line(
    web: Processes, queue: redis.Redis
) -> None:
    target = "http://hookfleet.example:8000/webhooks/standard"
    head = with_host(signed_head("absolute-1", target=target), "other.example")
    line, _, body = ask(public(web), delivery(head))

    assert line.startswith("HTTP/1.1 202"), (line, body)
    assert json.loads(body)["status"] == "accepted"
    assert total_queued(queue) == 1


@pytest.mark.parametrize(
    "target",
    [
        "http:///webhooks/standard",
        "http://user@hookfleet/webhooks/standard",
        "ftp://hookfleet/webhooks/standard",
    ],
)
def test_an_absolute_form_target_with_a_bad_authority_is_a_json_400(
    web: Processes, queue: redis.Redis, target: str
) -> None:
    line, _, body = ask(public(web), delivery(signed_head("absolute-bad", target=target)))

    assert line.startswith("HTTP/1.1 400"), (line, body)
    assert code_of(body) == "bad_host"
    assert total_queued(queue) == 0
