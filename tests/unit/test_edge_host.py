"""The Host rules of RFC 9112 section 3.2 (ingest/host_header.py), on environs as the
workers build them: which requests owe a 400 and which code, and what an absolute-form
target does to ``HTTP_HOST``."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.errors import ErrorCode
from ingest.host_header import host_refusal, valid_host


def environ(
    version: str = "HTTP/1.1", host: str | None = "hookfleet", target: str = "/x"
) -> dict[str, Any]:
    made: dict[str, Any] = {"SERVER_PROTOCOL": version, "RAW_URI": target, "PATH_INFO": "/x"}
    if host is not None:
        made["HTTP_HOST"] = host
    return made


@pytest.mark.parametrize(
    "value",
    [
        "hookfleet",
        "example.com",
        "example.com.",
        "example.com:443",
        "example.com:",  # port = *DIGIT
        "127.0.0.1:8000",
        "[::1]",
        "[::1]:8000",
        "[2001:db8::7]",
        "[::ffff:192.0.2.1]:80",
        "[v1.fe80::a+en1]",
        "xn--nxasmq6b.example",
        "a%20b",
        "sub_domain.example",
        "",  # no authority in the target URI: an empty Host (RFC 9110 section 7.2)
    ],
)
def test_a_host_that_is_uri_host_and_port_is_valid(value: str) -> None:
    assert valid_host(value)


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        "example.com/path",
        "example.com?q",
        "example.com#f",
        "user@example.com",
        "example.com:80:80",
        "example.com:http",
        "::1",
        "[::1",
        "::1]",
        "[:::1]:80",
        "[127.0.0.1]",
        "[::1]x",
        "exämple.com",
        "a%2",
        "a\\b",
        'a"b',
        "<a>",
        "a{b}",
    ],
)
def test_a_host_that_is_not_uri_host_and_port_is_invalid(value: str) -> None:
    assert not valid_host(value)


def test_an_http_1_1_request_without_host_is_refused() -> None:
    assert host_refusal(environ("HTTP/1.1", host=None)) is ErrorCode.MISSING_HOST


def test_an_http_1_0_request_without_host_is_served() -> None:
    assert host_refusal(environ("HTTP/1.0", host=None)) is None


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
def test_an_invalid_host_is_refused_in_every_version(version: str) -> None:
    assert host_refusal(environ(version, host="a b")) is ErrorCode.BAD_HOST


def test_an_empty_host_is_served() -> None:
    assert host_refusal(environ(host="")) is None


def test_an_absolute_form_target_replaces_the_host_by_its_authority() -> None:
    request = environ(host="ignored.example", target="http://hookfleet.example:8000/x?a=1")

    assert host_refusal(request) is None
    assert request["HTTP_HOST"] == "hookfleet.example:8000"


def test_an_absolute_form_target_still_needs_a_host_line_in_http_1_1() -> None:
    request = environ(host=None, target="http://hookfleet.example/x")

    assert host_refusal(request) is ErrorCode.MISSING_HOST


@pytest.mark.parametrize(
    "target",
    [
        "http:///x",  # empty authority (RFC 9110 section 4.2.1)
        "http://:80/x",  # a port, no host
        "http://user@hookfleet/x",  # userinfo (RFC 9110 section 4.2.4)
        "http://user:pw@hookfleet/x",
        "ftp://hookfleet/x",  # not an http(s) URI
        "http://[::1/x",
    ],
)
def test_an_absolute_form_target_with_a_bad_authority_is_refused(target: str) -> None:
    assert host_refusal(environ(target=target)) is ErrorCode.BAD_HOST


def test_https_and_upper_case_schemes_are_absolute_form_too() -> None:
    request = environ(target="HTTPS://[::1]:8443/x")

    assert host_refusal(request) is None
    assert request["HTTP_HOST"] == "[::1]:8443"


def test_asterisk_form_keeps_the_host_line() -> None:
    request = environ(target="*")

    assert host_refusal(request) is None
    assert request["HTTP_HOST"] == "hookfleet"
