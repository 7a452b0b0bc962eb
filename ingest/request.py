"""Reading a webhook request: its codings, its body (within the provider's limit) and
its headers, straight from gunicorn's WSGI environ and stream.

Every refusal is an :class:`~ingest.errors.ApiError` the sender can act on: 413 before
reading an oversized body, 400 for broken framing (the client's fault, never a 5xx),
415 for a coding the receiver does not decode. Sources: gunicorn ``http/body.py`` and
``http/errors.py`` (what a read raises), RFC 9112 sections 6 and 7 (framing).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import IO, Any

from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length, get_input_stream

from ingest.errors import ApiError, ErrorCode
from ingest.framing import AnnouncedTooLarge, close_after_answer, limit_announced_chunks
from ingest.providers.base import Delivery


def read_delivery(environ: dict[str, Any], limit: int) -> Delivery:
    """The raw body, refused early when it is too large (without reading the rest).

    400 ``incomplete_body`` when the body ends before its ``Content-Length`` or its last
    chunk (the client hung up: it is most likely gone, and nothing is queued), 400
    ``malformed_body`` for broken chunked framing, 413 ``body_too_large`` (for a chunked
    body as soon as its chunk-size lines announce more than ``limit``, before the bytes).
    """
    # What Flask's ``request.content_length`` and ``request.stream`` are (werkzeug's
    # functions): None for a chunked body; the stream ends at Content-Length.
    declared = get_content_length(environ)
    if declared is not None and declared > limit:
        close_after_answer(environ)  # the body is not read: what follows is not a request
        raise ApiError(ErrorCode.BODY_TOO_LARGE, f"The body exceeds {limit} bytes.")
    limit_announced_chunks(environ, limit)
    # gunicorn's input ends with the body (wsgi.input_terminated): get_input_stream
    # returns it as it is then, after reading Content-Length a second time.
    terminated = "wsgi.input_terminated" in environ
    stream = environ["wsgi.input"] if terminated else get_input_stream(environ)
    body = read_at_most(environ, stream, limit + 1)
    if len(body) > limit:
        close_after_answer(environ)
        raise ApiError(ErrorCode.BODY_TOO_LARGE, f"The body exceeds {limit} bytes.")
    if declared is not None and len(body) < declared:
        close_after_answer(environ)
        raise ApiError(
            ErrorCode.INCOMPLETE_BODY,
            f"The body ended after {len(body)} of its {declared} bytes (Content-Length).",
        )
    if not body:
        raise ApiError(ErrorCode.EMPTY_BODY)
    refuse_repeated(environ)
    return Delivery(body=body, headers=lower_headers(environ), received_at=time.time())


# The environ key (PEP 3333: a server's own keys carry a prefix) where the receiver's
# gunicorn workers put the lower-case names of the header fields the request repeated
# (ingest/aio_worker.py, ingest/gunicorn_worker.py); absent when none came twice. The
# environ itself holds a repeated field's lines joined by "," (RFC 9110 section 5.3),
# as gunicorn's http/wsgi.py joins them.
REPEATED_HEADERS = "hookfleet.repeated_headers"

# Headers the receiver reads as one value: each provider's id, timestamp and signature
# headers (/work/shared/PROTOCOLS.md; Retell's SDK ``verify``, Cal.com's
# ``X-Cal-Signature-256``, Stripe's one ``Stripe-Signature`` with all its ``v1=``, the
# Standard Webhooks spec's one ``webhook-signature`` with its signatures separated by
# spaces). Two lines of one are two values: joined they make neither, and picking one
# would let whoever added the other choose the event id or the signature checked.
# (gunicorn's parser refuses a repeated Content-Type or Content-Length itself, 400
# malformed_request; ingest/aio_worker.py hands those heads to it.)
SINGLE_HEADERS = frozenset(
    {
        "x-retell-signature",
        "x-cal-signature-256",
        "stripe-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def repeated_names(fields: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lower-case names of the :data:`SINGLE_HEADERS` among ``fields`` (``(name,
    value)`` pairs as a server parsed them, names in any case) that came more than once."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for name, _ in fields:
        lower = name.lower()
        if lower in SINGLE_HEADERS:
            (repeated if lower in seen else seen).add(lower)
    return frozenset(repeated)


def refuse_repeated(environ: dict[str, Any]) -> None:
    """400 ``repeated_header`` when one of :data:`SINGLE_HEADERS` came on more than one
    line (the worker said so in :data:`REPEATED_HEADERS`)."""
    repeated = environ.get(REPEATED_HEADERS)
    if repeated:
        names = ", ".join(sorted(repeated))
        raise ApiError(
            ErrorCode.REPEATED_HEADER,
            f"The header {names} came more than once; send it once (several signatures "
            "go in one header, as the provider's scheme lists them).",
        )


# Codings a body may be sent with. A content coding (gzip, br) would change the bytes
# the provider signed, and no provider Hookfleet speaks compresses its deliveries, so
# only "identity" passes; a transfer coding other than chunked would need decoding
# gunicorn does not do (it passes "gzip, chunked" through still compressed), and
# "identity" is none (RFC 7230 section 8.4 removed it; "identity, chunked" was accepted).
_IDENTITY = frozenset({"", "identity"})
_TRANSFER_CODINGS = frozenset({"", "chunked"})


def refuse_codings(environ: dict[str, Any]) -> None:
    """415 for a body in a content or transfer coding the receiver does not decode,
    before its signature is checked (a compressed body would fail it: a 401 would send
    the sender hunting for a secret problem)."""
    # Most deliveries name neither coding: nothing to split then.
    content = environ.get("HTTP_CONTENT_ENCODING", "")
    if content and any(c.strip().lower() not in _IDENTITY for c in content.split(",")):
        raise ApiError(
            ErrorCode.UNSUPPORTED_CONTENT_ENCODING,
            f"Content-Encoding {content[:64]!r} is not supported; send the body "
            "uncompressed (Content-Encoding: identity or none).",
        )
    transfer = environ.get("HTTP_TRANSFER_ENCODING", "")
    if transfer and any(c.strip().lower() not in _TRANSFER_CODINGS for c in transfer.split(",")):
        raise ApiError(
            ErrorCode.UNSUPPORTED_TRANSFER_ENCODING,
            f"Transfer-Encoding {transfer[:64]!r} is not supported; send the body with "
            "Content-Length or Transfer-Encoding: chunked alone.",
        )


# Some servers also set these; like werkzeug, the CONTENT_* variables are the real ones.
_ENTITY_HEADERS = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"})
_UNSEEN = ""  # a name no header has (an empty one is never in the environ)


# environ key -> its header's lower-case name (None: not a header). The same few dozen
# keys come with every request; bounded, so a sender's made-up header names cannot grow
# it past the cap (beyond it names are worked out each time).
_HEADER_NAMES: dict[str, str | None] = {}
_HEADER_NAMES_CAP = 512


def _header_name(key: str) -> str | None:
    if key.startswith("HTTP_") and key not in _ENTITY_HEADERS:
        return key[5:].replace("_", "-").lower()
    return None


def lower_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name, read straight from the WSGI environ
    (what ``request.headers`` iterates over, without building each pair twice)."""
    names = _HEADER_NAMES
    headers = {}
    for key, value in environ.items():
        name = names.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = _header_name(key)
            if len(names) < _HEADER_NAMES_CAP:
                names[key] = name
        if name is not None:
            headers[name] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def read_at_most(environ: dict[str, Any], stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes of the body from ``stream`` (``environ``'s input). A chunked
    body (no Content-Length) arrives in pieces, so read until the end or one byte past
    the limit, never further.

    Broken framing is the client's fault and answered 400: gunicorn raises its parse
    errors (a bad chunk size line, a missing CRLF) from inside the read, and
    ``NoMoreData`` / a reset when the client hangs up mid-chunk.
    """
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        try:
            part = stream.read(remaining)
        except AnnouncedTooLarge as error:
            close_after_answer(environ)
            raise ApiError(
                ErrorCode.BODY_TOO_LARGE, f"The body exceeds {error.limit} bytes."
            ) from None
        except ParseException as error:
            close_after_answer(environ)
            raise ApiError(
                ErrorCode.MALFORMED_BODY, f"The chunked body is malformed: {error}"[:300]
            ) from None
        except (OSError, ClientDisconnected):  # gunicorn's NoMoreData is an OSError
            close_after_answer(environ)
            raise ApiError(
                ErrorCode.INCOMPLETE_BODY, "The connection ended in the middle of the body."
            ) from None
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
