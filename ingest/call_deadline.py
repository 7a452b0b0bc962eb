"""A waiting sender's answer deadline, counted from its request's arrival.

A Retell ``call_inbound`` must be answered within Retell's 10 s, else the phone rings
into the number's default agent and Retell sends the call again. Each step of an answer
had its own bound (the lookup's budget, the record's Redis try, its database write),
counted from when a WSGI thread took the call: under load, calls queued behind threads
that a slow database held, and an outsider measured answers of 6-12 s (19 of 180 past
Retell's 10 s) at 15 calls/s with the database 400 ms away and Redis frozen. Now every
step gets ``min(its bound, what is left)`` of one deadline that starts when the request
arrived (ingest/aio_worker.py sets :data:`ARRIVED` in the environ: when it was whole in
the event loop, less the time its connection's first bytes waited in the kernel's accept
queue, ingest/accept_queue.py), and a call that waited in a queue (the listen backlog of
a busy or starting worker, or for a thread) skips what no longer fits: the lookup (the
answer then has no override) and the database write (the record goes to
ingest/late_records.py with its WARNING and ERROR); the record's Redis try (75 ms at
most) is made all the same (ingest/inbound_record.py).

The deadline is ingest/inbound_record.py ``answer_bound_s``: the lookup's budget
(HOOKFLEET_INBOUND_BUDGET_MS) + the record's Redis bound (a quarter of the budget) + the
database bound (1 s): 1.375 s at the default budget. An answer leaves by then, counted
from its first byte's arrival in the kernel, unless the request waited longer than that
to be taken (then it leaves as soon as taken, after at most the Redis try) or took longer
than that to arrive whole (the client's own sending time is not the receiver's to cut).
The gthread fallback worker has no such stamps: its deadline starts when a thread takes
the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic
from typing import Any

#: Environ key: ``time.monotonic()`` when the request was whole in the event loop.
ARRIVED = "hookfleet.arrived"
#: Seconds under which a step is not started: it could not do anything useful.
TOO_LITTLE_S = 0.005

_current: ContextVar[CallDeadline | None] = ContextVar("hookfleet_call_deadline", default=None)


@dataclass(frozen=True)
class CallDeadline:
    """When a waiting sender's answer must leave (``time.monotonic()`` seconds)."""

    ends: float

    def left_s(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.ends - monotonic())

    def within(self, bound_s: float) -> float:
        """``min(bound_s, what is left)``: what a step with its own bound may take."""
        return min(bound_s, self.left_s())


def arrived_at(environ: dict[str, Any]) -> float:
    """When the request arrived: the loop's :data:`ARRIVED`, else now (a request served
    by another worker class, or a test client: its thread took it at once)."""
    arrived = environ.get(ARRIVED)
    return arrived if isinstance(arrived, float) else monotonic()


@contextlib.contextmanager
def applied(deadline: CallDeadline) -> Iterator[None]:
    """Make ``deadline`` the one :func:`current` returns in this context (the lookup
    asks for it: ingest/inbound.py ``InboundDirectory.find``)."""
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> CallDeadline | None:
    """The deadline of the answer being made in this context; None outside one."""
    return _current.get()
