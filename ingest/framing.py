"""What the receiver learns from a chunked body's framing before its bytes arrive.

A chunk-size line (RFC 9112 section 7.1) announces how many bytes follow. gunicorn's
``ChunkedReader`` then waits for all of them, so ``200000`` (2 MiB) announced to a
1 MiB provider, or ``ffffffffffffffff``, would hold the request until the client sends
or hangs up. ``limit_announced_chunks`` counts the announced sizes as gunicorn parses
them and raises ``AnnouncedTooLarge`` as soon as their sum passes the provider's body
limit: the receiver answers 413 at once, like a too large ``Content-Length``.

Source: gunicorn ``http/body.py`` (``ChunkedReader.parse_chunked`` reads each
chunk-size line through ``self.parse_chunk_size`` and then blocks for the chunk) and
``http/message.py`` (``Request.must_close``; ``should_close`` decides the
``Connection`` header gunicorn writes).
"""

from __future__ import annotations

from typing import Any

from gunicorn.http.body import ChunkedReader


class AnnouncedTooLarge(Exception):
    """The chunk-size lines so far announce ``announced`` bytes, over ``limit``."""

    def __init__(self, announced: int, limit: int) -> None:
        # Not the announced size itself: a size line of thousands of hex digits is an
        # int Python refuses to print (its 4,300-digit limit), and the 413 became a 500.
        super().__init__(f"chunks announce more than {limit} bytes")
        self.announced = announced
        self.limit = limit


def limit_announced_chunks(environ: dict[str, Any], limit: int) -> None:
    """Make the request's chunked reader refuse a chunk announcing more than what is
    left of ``limit``; nothing for a body framed by ``Content-Length``."""
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    if not isinstance(reader, ChunkedReader):
        return
    parse_size = reader.parse_chunk_size
    announced = 0

    def budgeted(unreader: Any, data: bytes | None = None) -> tuple[int, bytes]:
        nonlocal announced
        size, rest = parse_size(unreader, data)
        announced += size
        if announced > limit:
            raise AnnouncedTooLarge(announced, limit)
        return size, rest

    # An instance attribute: the parser generator looks the method up at each line.
    reader.parse_chunk_size = budgeted


def close_after_answer(environ: dict[str, Any]) -> None:
    """Close the connection after this answer (and say so in ``Connection``): the
    body was not read to its end, so what follows on the socket is not a request."""
    request = getattr(getattr(environ.get("wsgi.input"), "reader", None), "req", None)
    if request is not None:
        request.must_close = True
