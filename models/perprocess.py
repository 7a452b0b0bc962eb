"""One value per process, rebuilt after a fork: connections, pools, threads, settings.

gunicorn forks its workers after ``create_app()`` and Celery's prefork pool forks its
children after the app is configured: pools, sockets and threads made before the fork
must not be shared. :class:`PerProcess` builds its value on first use in each process
and hands the same one to every thread of that process; :class:`PerProcessMap` does the
same for values kept by key (one HTTP client or circuit breaker per service). They are
the one such cache in Hookfleet (the receiver's lookups, the workers' settings, engine,
lease, HTTP clients and breakers) so the rule is written once: a value remembers the
process id that built it, and another process (a forked child) never sees it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class PerProcess(Generic[T]):
    """``get()`` builds with ``build()`` once per process id; thread-safe.

    ``build`` may instead be given to :meth:`get` where it needs arguments known only
    at the first call (the worker's lease needs the transport's lease times)."""

    def __init__(self, build: Callable[[], T] | None = None) -> None:
        self._build = build
        # A lock per process id: a lock that a parent's thread held while it built, at
        # the moment of a fork, stays held in the child, where that thread does not
        # exist. ``setdefault`` is atomic, so every thread of one process takes the same
        # lock; the dict holds one lock per process of its fork chain (parent, child).
        self._locks: dict[int, threading.Lock] = {}
        self._owner: tuple[int, T] | None = None

    def _lock(self) -> threading.Lock:
        pid = os.getpid()
        return self._locks.get(pid) or self._locks.setdefault(pid, threading.Lock())

    def get(self, build: Callable[[], T] | None = None) -> T:
        """This process's value; built first with ``build`` (else the constructor's)
        when this process has none. TypeError when neither was given."""
        owner = self._owner
        if owner is not None and owner[0] == os.getpid():
            return owner[1]
        with self._lock():
            if self._owner is None or self._owner[0] != os.getpid():
                maker = build or self._build
                if maker is None:
                    raise TypeError("PerProcess.get() needs a build function")
                self._owner = (os.getpid(), maker())
            return self._owner[1]

    def peek(self) -> T | None:
        """This process's value if it built one, else None (never builds; a value
        inherited from a parent is not this process's)."""
        owner = self._owner
        return owner[1] if owner is not None and owner[0] == os.getpid() else None

    def forget(self) -> T | None:
        """Drop this process's value and return it (to close it), or None when this
        process built none; a value inherited from a parent is dropped, not returned,
        as it is the parent's to close. The next ``get()`` builds again."""
        with self._lock():
            owner, self._owner = self._owner, None
        return owner[1] if owner is not None and owner[0] == os.getpid() else None


class PerProcessMap(Generic[K, T]):
    """``get(key, build)``: one value per key per process, built by ``build()`` on the
    key's first use in this process; every thread of the process shares it. A forked
    child starts with an empty map (and a lock of its own: a lock a parent's thread held
    at the fork would never be released in the child; :class:`PerProcess` too)."""

    def __init__(self) -> None:
        self._map: PerProcess[tuple[threading.Lock, dict[K, T]]] = PerProcess(
            lambda: (threading.Lock(), {})
        )

    def get(self, key: K, build: Callable[[], T]) -> T:
        lock, values = self._map.get()
        found = values.get(key)
        if found is None:
            with lock:
                found = values.get(key)
                if found is None:
                    found = values[key] = build()
        return found
