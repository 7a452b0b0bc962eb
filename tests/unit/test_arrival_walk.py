"""A request arriving in pieces is judged by a walk resumed where it stopped
(ingest/gunicorn_worker.py ``ArrivalWalk``): at every piece it says what one look at
the whole buffer says (:func:`arrival`), and its cost is linear in the request's bytes
however small the pieces and chunks (a walk from the start at each piece was
quadratic: a million one-byte chunks held a worker's loop past gunicorn's timeout)."""

from __future__ import annotations

import random
import time

import pytest

from ingest.gunicorn_worker import Arrival, ArrivalWalk, arrival

HEADS = (
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nExpect: nonsense\r\nContent-Length: 5\r\n\r\n",
    b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\nHost: a\r\n\r\n",
)
BODIES = (
    b"5\r\nhello\r\n0\r\n\r\n",
    b"1;ext=1\r\na\r\n2 \r\nbb\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n",
    b"hello",
    b"3\r\nabcXX",
    b"5\nhello",
    b"0\r\nX: 1\n\r\n",
    b"zz\r\n",
    b"1\r\na\r\n" * 40 + b"0\r\n\r\n",
    b"4\r\nab\r\n\r\n0\r\n\r\n",
    b"1;" + b"e" * 1100 + b"\r\na\r\n0\r\n\r\n",
    b"",
)


@pytest.mark.parametrize("head", HEADS)
def test_a_walk_resumed_at_every_piece_says_what_one_look_at_the_whole_says(
    head: bytes,
) -> None:
    pieces = random.Random(head)
    for body in BODIES:
        request = head + body + b"GET /next HTTP/1.1\r\n\r\n"
        for limit in (3, 40, 100_000):
            for _ in range(6):
                walk, data, sent = ArrivalWalk(), bytearray(), 0
                while sent < len(request):
                    step = pieces.randint(1, 9)
                    data += request[sent : sent + step]
                    sent += step
                    # A few chunks a look, looked at again while some are unwalked.
                    steps = pieces.choice((0, 2, 3))
                    state = walk.arrival(data, lambda _head, limit=limit: limit, steps)
                    while walk.unwalked:
                        state = walk.arrival(data, lambda _head, limit=limit: limit, steps)
                    assert state is arrival(bytes(data), limit), (request, bytes(data), limit)
                    if state not in (Arrival.COMING, Arrival.EXPECTS_CONTINUE):
                        break


def chunked_in_pieces(chunks: int, piece: int) -> float:
    """CPU seconds a walk takes over ``chunks`` one-byte chunks arriving ``piece``
    bytes at a time."""
    body = b"1\r\na\r\n" * chunks + b"0\r\n\r\n"
    data = bytearray(HEADS[0])
    walk = ArrivalWalk()
    started = time.process_time()
    for sent in range(0, len(body), piece):
        data += body[sent : sent + piece]
        state = walk.arrival(data, lambda _head: 2 * chunks)
    assert state is Arrival.WHOLE
    return time.process_time() - started


def test_a_million_one_byte_chunks_cost_a_walk_linear_in_their_bytes() -> None:
    # Quadratic, the million took minutes; linear, about a second on a loaded box.
    assert chunked_in_pieces(1_000_000, 65_536) < 5.0
    small, large = chunked_in_pieces(20_000, 7), chunked_in_pieces(80_000, 7)
    assert large < 8 * small + 0.2  # 4x the bytes in tiny pieces: ~4x the time, not 16x


def test_a_head_arriving_byte_by_byte_is_searched_once() -> None:
    head = b"POST /x HTTP/1.1\r\nX: " + b"a" * 120_000
    data, walk = bytearray(), ArrivalWalk()
    started = time.process_time()
    for byte in range(len(head)):
        data += head[byte : byte + 1]
        assert walk.arrival(data, lambda _head: 1) is Arrival.COMING
    assert time.process_time() - started < 3.0  # searched from the start each time: minutes
    data += b"\r\n\r\n"
    assert walk.arrival(data, lambda _head: 1) is Arrival.WHOLE


@pytest.mark.parametrize(
    ("chunks", "dechunked"),
    [
        (b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", b"hello!"),
        (b"0\r\n\r\n", b""),
        # gunicorn's parser must judge these: extensions, spaces, a trailer section.
        (b"5;x=1\r\nhello\r\n0\r\n\r\n", None),
        (b"5 \r\nhello\r\n0\r\n\r\n", None),
        (b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", None),
        (b"5\r\nhello\r\n0\r\n", None),  # not whole yet
    ],
)
def test_bare_chunks_are_read_by_the_walk_itself(chunks: bytes, dechunked: bytes | None) -> None:
    data, walk = bytearray(HEADS[0]), ArrivalWalk()
    for byte in chunks:  # one byte at a time: a size line split across pieces included
        data.append(byte)
        walk.arrival(data, lambda _head: 100)
    assert walk.dechunked() == dechunked
    if dechunked is not None:
        assert walk.request_end == len(data)
