"""gunicorn's threaded worker, answering requests it refuses itself in Hookfleet's shape.

gunicorn rejects some requests before the application sees them: a malformed request
line or header, a ``Content-Length`` that is not a number, ``Content-Length`` together
with ``Transfer-Encoding``, a ``Transfer-Encoding`` that does not end in ``chunked``
(RFC 9112 section 6.3) or names a coding it does not know (``br``). Stock gunicorn
answers those with an HTML page, and an unknown transfer coding with 501, which a
provider would retry as a server fault. Here each is a JSON error
``{"error": {"code", "message"}}`` with a 4xx status and a WARNING line (gunicorn's
own); errors that are not the client's stay gunicorn's (500, logged with traceback).

Source: gunicorn ``workers/base.py`` ``Worker.handle_error`` and ``http/message.py``
``Request.set_body_reader`` (gunicorn 22+).
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

# (gunicorn exception name, status, reason phrase, code), most specific first. By name:
# older gunicorn releases lack some (InvalidChunkExtension, ObsoleteFolding).
_ANSWERS_BY_NAME = (
    ("UnsupportedTransferCoding", 415, "Unsupported Media Type", "unsupported_transfer_encoding"),
    ("LimitRequestLine", 414, "URI Too Long", "request_line_too_long"),
    ("LimitRequestHeaders", 431, "Request Header Fields Too Large", "headers_too_large"),
    ("ExpectationFailed", 417, "Expectation Failed", "expectation_failed"),
    ("InvalidChunkSize", 400, "Bad Request", "malformed_body"),
    ("ChunkMissingTerminator", 400, "Bad Request", "malformed_body"),
    ("InvalidChunkExtension", 400, "Bad Request", "malformed_body"),
    ("InvalidHeader", 400, "Bad Request", "malformed_request"),
    ("InvalidHeaderName", 400, "Bad Request", "malformed_request"),
    ("ObsoleteFolding", 400, "Bad Request", "malformed_request"),
    ("InvalidRequestLine", 400, "Bad Request", "malformed_request"),
    ("InvalidRequestMethod", 400, "Bad Request", "malformed_request"),
    ("InvalidHTTPVersion", 400, "Bad Request", "malformed_request"),
)
_ANSWERS: tuple[tuple[type[Exception], int, str, str], ...] = tuple(
    (getattr(errors, name), status, reason, code)
    for name, status, reason, code in _ANSWERS_BY_NAME
    if hasattr(errors, name)
)


def json_error_answer(exc: BaseException) -> tuple[int, str, bytes] | None:
    """``(status, reason, raw HTTP response)`` for a request error that is the
    client's fault; None for anything else."""
    for kind, status, reason, code in _ANSWERS:
        if isinstance(exc, kind):
            message = f"The request is malformed: {exc}"[:300]
            body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
            head = (
                f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            return status, reason, head.encode("latin-1") + body
    return None


class JsonErrorWorker(ThreadWorker):
    """``gthread`` with JSON answers for the requests gunicorn refuses itself."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        answer = json_error_answer(exc)
        if answer is None:
            super().handle_error(req, client, addr, exc)
            return
        status, _, raw = answer
        peer = (addr or ("", -1))[0]
        self.log.warning(f"Invalid request from ip={peer}: {exc} (answered {status})")
        try:
            util.write_nonblock(client, raw)
        except Exception:  # noqa: BLE001 (the client may be gone; nothing to answer)
            self.log.debug("Failed to send error message.")
