"""The request's ``Host``: required in HTTP/1.1, well-formed in any version, and taken
from an absolute-form request target.

RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to
any HTTP/1.1 request message that lacks a Host header field and to any request message
that contains more than one Host header field line or a Host header field with an
invalid field value." So:

- HTTP/1.1 (and 1.2-1.9, read as 1.1: ingest/http_version.py) without ``Host``:
  400 ``missing_host``. HTTP/1.0 without one is served (the field came with 1.1).
- A ``Host`` value that is not ``uri-host [ ":" port ]`` (RFC 9110 section 7.2,
  RFC 3986 section 3.2.2: a reg-name, an IPv4 address or a bracketed IPv6 / IPvFuture
  literal, then digits after one colon), in any version: 400 ``bad_host``. An empty
  value is valid (RFC 9110 section 7.2: sent for a target URI without an authority).
- Two ``Host`` lines: gunicorn's parser refuses them before the app (RFC 9110
  section 5.3 singleton); ingest/gunicorn_worker.py answers 400 ``bad_host``.
- An absolute-form request target (``POST http://example.com/webhooks/stripe
  HTTP/1.1``, RFC 9112 section 3.2.2): routed by its path, like the origin form; "the
  origin server MUST ignore the received Host header field (if any) and instead use
  the host information of the request-target", so ``HTTP_HOST`` becomes the target's
  authority. The Host line is still required in HTTP/1.1 (RFC 9112 section 3.2: "A
  client MUST send a Host header field in an HTTP/1.1 request even if the
  request-target is in the absolute-form"). A scheme other than ``http``/``https``, an
  empty authority (RFC 9110 section 4.2.1: "MUST reject it as invalid") or one with
  userinfo (section 4.2.4: treat "its presence as an error") is 400 ``bad_host``.

Nothing here reads the Host to route: the listener is the accepting socket's
(ingest/listeners.py), the path the server's ``PATH_INFO``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from flask import Flask, request

from ingest.errors import ApiError, ErrorCode

# RFC 3986 section 3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims )
_REG_NAME = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
# IP-literal = "[" ( IPv6address / IPvFuture ) "]"; the IPv6 form is checked below.
_IPV6 = r"\[(?P<v6>[0-9A-Fa-f:.]+)\]"
_IPV_FUTURE = r"\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
_HOST_VALUE = re.compile(rf"(?:{_IPV6}|{_IPV_FUTURE}|{_REG_NAME})(?::[0-9]*)?")
_ABSOLUTE_FORM = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)")


def valid_host(value: str) -> bool:
    """Whether ``value`` (a ``Host`` field value, its surrounding whitespace already
    stripped) is ``uri-host [ ":" port ]`` (RFC 9110 section 7.2)."""
    match = _HOST_VALUE.fullmatch(value)
    if match is None:
        return False
    literal = match.group("v6")
    if literal is None:
        return True
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def host_refusal(environ: dict[str, Any]) -> ErrorCode | None:
    """The 400 a request owes for its ``Host`` (``missing_host`` or ``bad_host``),
    None when it is fine. For an absolute-form target (``RAW_URI``), ``HTTP_HOST`` is
    set to the target's authority first (``environ`` changes)."""
    host = environ.get("HTTP_HOST")
    if host is None and environ.get("SERVER_PROTOCOL") != "HTTP/1.0":
        return ErrorCode.MISSING_HOST
    if host is not None and not valid_host(host):
        return ErrorCode.BAD_HOST
    target = environ.get("RAW_URI", "")
    if target[:1] in ("/", "*", ""):
        return None  # origin form (or OPTIONS *): the Host line stands
    absolute = _ABSOLUTE_FORM.match(target)
    if absolute is None:
        return None  # not absolute-form: gunicorn's parser refused it already
    authority = absolute.group("authority")
    if (
        absolute.group("scheme").lower() not in ("http", "https")
        or not authority
        or authority.startswith(":")  # a port without a host
        or "@" in authority
        or not valid_host(authority)
    ):
        return ErrorCode.BAD_HOST
    environ["HTTP_HOST"] = authority
    return None


def init_app(app: Flask) -> None:
    """Refuse a request for its ``Host`` (:func:`host_refusal`) before any view or route
    decides: after the correlation id is set (the refusal carries it and, on a webhook
    path, is counted as a ``bad_request`` answer, ingest/metrics.py), before the
    listener's 404s (ingest/metrics.py ``_each_listener_its_own_routes``)."""

    @app.before_request
    def _refuse_bad_host() -> None:
        code = host_refusal(request.environ)
        if code is not None:
            raise ApiError(code)
