"""The HTTP version a request is read and answered in.

The receiver speaks HTTP/1.1 (RFC 9112). For a request line's version:

- ``HTTP/1.0`` and ``HTTP/1.1``: served; the answer says ``HTTP/1.1`` (RFC 9110 section
  2.5: a server sends the highest version it conforms to whose major version is not
  above the request's), the request keeps its own semantics (an HTTP/1.0 request closes
  its connection unless it asks for keep-alive, and gets no chunked answer).
- ``HTTP/1.2`` to ``HTTP/1.9``: a later minor version of 1.x, read as HTTP/1.1 (RFC 9110
  section 2.5: "a recipient ... process[es] a message as if it were the highest minor
  version within that major version to which the recipient is conformant") and answered
  ``HTTP/1.1``, never with the client's version echoed.
- ``HTTP/2.0``, ``HTTP/3.0``, ``HTTP/0.9``: well-formed, another major version (HTTP/2
  and 3 are not spoken on this port; its h2c preface ``PRI * HTTP/2.0`` included):
  505 ``http_version_not_supported`` (RFC 9110 section 15.6.6).
- Anything else (``HTTP/1.10``, ``http/1.1``, ``HTTP/01.1``, ``HTTP/1``, no version):
  not the grammar ``HTTP/DIGIT.DIGIT`` (RFC 9112 section 2.3): 400 ``malformed_request``.

gunicorn's parser (``http/message.py`` ``Request.parse_request_line``, ``VERSION_RE``)
raises ``InvalidHTTPVersion`` with the version as a tuple for a well-formed one outside
1.x and as the text for a malformed one; ingest/gunicorn_worker.py answers each.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import errors
from gunicorn.http import wsgi as gunicorn_wsgi

ANSWER_VERSION = "1.1"


class Http11Response(gunicorn_wsgi.Response):
    """gunicorn's response, its status line ``HTTP/1.1`` whatever the request's 1.x."""

    def default_headers(self) -> list[str]:
        headers: list[str] = super().default_headers()
        headers[0] = f"HTTP/{ANSWER_VERSION} {self.status}\r\n"
        return headers


def read_as_http11(request: Any) -> None:
    """A gunicorn request of HTTP/1.2 to 1.9 is read as HTTP/1.1 (its ``version``)."""
    major, minor = request.version
    if major == 1 and minor > 1:
        request.version = (1, 1)


def answer_as_http11(request: Any, sock: Any, client: Any, server: Any, cfg: Any) -> Any:
    """gunicorn's ``http/wsgi.py`` ``create`` (``(response, environ)``) for ``request``,
    read as HTTP/1.1 when a later 1.x and answered ``HTTP/1.1``."""
    read_as_http11(request)
    return gunicorn_wsgi.create(request, sock, client, server, cfg, response_class=Http11Response)


# HTTP/2's connection preface starts with this request line (RFC 9113 section 3.4);
# gunicorn refuses its method before it reads the version.
_H2_PREFACE_LINE = "PRI * HTTP/2.0"


def unsupported_version(exc: BaseException) -> str | None:
    """``"HTTP/M.N"`` when ``exc`` is gunicorn's refusal of a well-formed version of
    another major version (505); None for anything else (a malformed one is a 400)."""
    if isinstance(exc, errors.InvalidRequestLine):
        return "HTTP/2.0" if getattr(exc, "req", None) == _H2_PREFACE_LINE else None
    if not isinstance(exc, errors.InvalidHTTPVersion):
        return None
    version = exc.version
    if isinstance(version, tuple) and len(version) == 2:
        return f"HTTP/{version[0]}.{version[1]}"
    return None
