"""Connections and threads for the receiver's own lookups, rebuilt in each process.

gunicorn forks its workers after ``create_app()``: pools, sockets and threads made
before the fork must not be shared. :class:`PerProcess` builds its value on first use
in each process and hands the same one to every thread of that process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
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
