"""One value per process: built once, shared by threads, rebuilt after a fork."""

from __future__ import annotations

import itertools
import os
import threading

from models.perprocess import PerProcess


def test_every_thread_of_a_process_gets_the_one_value() -> None:
    counter = itertools.count()
    cache = PerProcess(lambda: next(counter))
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(cache.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert seen == [0] * 8


def test_a_forked_child_builds_its_own_and_does_not_close_the_parents() -> None:
    cache = PerProcess(lambda: os.getpid())
    parent_value = cache.get()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        inherited = cache.forget()  # the parent's value: not this child's to close
        report = f"{inherited} {cache.get()}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    inherited, rebuilt = os.read(read, 100).decode().split()
    os.close(read)

    assert (inherited, rebuilt) == ("None", str(child))
    assert cache.get() == parent_value == os.getpid()


def test_forget_hands_back_this_process_value_and_the_next_get_builds_again() -> None:
    counter = itertools.count()
    cache = PerProcess(lambda: next(counter))
    first = cache.get()

    assert cache.forget() == first
    assert cache.forget() is None
    assert cache.get() == first + 1
