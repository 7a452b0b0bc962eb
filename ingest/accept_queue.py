"""How long a connection's first bytes waited in the kernel before the worker accepted
it: the start of an inline answer's deadline (ingest/call_deadline.py) moves back by it.

The kernel records no accept-queue time, but it stamps received data: with
``SO_TIMESTAMPNS`` set on a listener (Linux socket(7); accepted sockets inherit it), a
``recvmsg(..., MSG_PEEK)`` of one byte right after ``accept()`` returns, as an
``SCM_TIMESTAMPNS`` control message (a ``struct timespec``, CLOCK_REALTIME), when the
first byte already waiting arrived. A request that waited in the listen backlog while
every worker was busy (or still starting) therefore counts its wait: an outsider
measured an answer 1.96 s after the client sent it, with the deadline counted from the
event loop's read at 1.375 s. Where nothing has come yet, or the platform has no such
stamps, the wait is 0 (the deadline starts when the request is whole, as before); so it
is for data that came in the moment after the option was first set on the host (Linux
turns stamping on through a work queue, ``net_enable_timestamp``): a worker sets it on
its listeners before it accepts anything.
"""

from __future__ import annotations

import socket
import struct
import time

# Linux's values (asm-generic/socket.h); Python's socket module does not export them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")


def stamp_arrivals(listener: socket.socket) -> None:
    """Have the kernel stamp the data of every connection ``listener`` accepts."""
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:  # another platform, a socket without the option: no waits counted
        pass


def waited_before_accept(client: socket.socket) -> float:
    """Seconds (>= 0) the first byte waiting on the just-accepted, non-blocking
    ``client`` had been there; 0 when none has come or it carries no stamp."""
    if client.family not in (socket.AF_INET, socket.AF_INET6):
        return 0.0
    try:
        _, ancillary, _, _ = client.recvmsg(1, socket.CMSG_SPACE(_TIMESPEC.size), socket.MSG_PEEK)
    except OSError:  # nothing yet (BlockingIOError), or the client is gone
        return 0.0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return max(0.0, time.time() - (seconds + nanoseconds / 1e9))
    return 0.0
