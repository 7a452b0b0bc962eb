"""One value per process, rebuilt after a fork: connections, pools, threads, settings.

gunicorn forks its workers after ``create_app()`` and Celery's prefork pool forks its
children after the app is configured: pools, sockets and threads made before the fork
must not be shared. :class:`PerProcess` builds its value on first use in each process
and hands the same one to every thread of that process. It is the one such cache in
Hookfleet (the receiver's lookups, the workers' engine and settings) so the rule is
written once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get()`` builds with ``build()`` once per process id; thread-safe."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._owner: tuple[int, T] | None = None

    def get(self) -> T:
        owner = self._owner
        if owner is not None and owner[0] == os.getpid():
            return owner[1]
        with self._lock:
            if self._owner is None or self._owner[0] != os.getpid():
                self._owner = (os.getpid(), self._build())
            return self._owner[1]

    def forget(self) -> T | None:
        """Drop this process's value and return it (to close it), or None when this
        process built none; a value inherited from a parent is dropped, not returned,
        as it is the parent's to close. The next ``get()`` builds again."""
        with self._lock:
            owner, self._owner = self._owner, None
        return owner[1] if owner is not None and owner[0] == os.getpid() else None
