"""One value per process: built once, shared by threads, rebuilt after a fork. The same
for values kept by key (HTTP clients, breakers) and for the worker's lease."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable

import pytest

from models.perprocess import PerProcess, PerProcessMap
from workers.broker.leases import current_lease, process_lease


def in_fork(child_reports: Callable[[], str]) -> str:
    """What ``child_reports()`` returned in a forked child of this process."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, child_reports().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    report = os.read(read, 1000).decode()
    os.close(read)
    return report


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


def test_a_value_built_at_first_get_is_peeked_but_never_built_by_peek() -> None:
    cache: PerProcess[list[int]] = PerProcess()

    assert cache.peek() is None
    with pytest.raises(TypeError):
        cache.get()
    built = cache.get(lambda: [1])

    assert cache.peek() is built
    assert cache.get(lambda: [2]) is built
    assert in_fork(lambda: repr(cache.peek())) == "None"


def test_every_thread_gets_the_one_value_of_its_key() -> None:
    counter = itertools.count()
    cache: PerProcessMap[str, int] = PerProcessMap()
    seen: list[tuple[str, int]] = []

    def use(key: str) -> None:
        seen.append((key, cache.get(key, lambda: next(counter))))

    threads = [threading.Thread(target=use, args=(key,)) for key in "abab" * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(seen) == 16
    assert len({value for _, value in seen}) == 2
    assert len({(key, value) for key, value in seen}) == 2


def test_a_forked_child_builds_its_own_value_for_a_key() -> None:
    cache: PerProcessMap[str, int] = PerProcessMap()
    parent_value = cache.get("retell", os.getpid)

    in_child = in_fork(lambda: f"{cache.get('retell', os.getpid)} {os.getpid()}")

    built, child_pid = in_child.split()
    assert built == child_pid != str(parent_value)
    assert cache.get("retell", lambda: -1) == parent_value == os.getpid()


def test_a_forked_worker_process_takes_its_own_lease() -> None:
    # In a child, so this test process keeps no lease for the tests after it.
    def child() -> str:
        lease = process_lease(30.0, 10.0)
        same = process_lease(60.0, 20.0) is lease and current_lease() is lease
        return f"{same} {in_fork(lambda: repr(current_lease()))}"

    assert in_fork(child) == "True None"


def test_a_child_forked_while_a_parent_thread_builds_builds_its_own_without_waiting() -> None:
    """A fork while another thread of the parent is inside ``build()`` (holding the
    lock): the child has no such thread, so it must not wait on that lock."""
    building, release = threading.Event(), threading.Event()

    def slow_build() -> int:
        building.set()
        release.wait(10)
        return os.getpid()

    cache = PerProcess(slow_build)
    builder = threading.Thread(target=cache.get)
    builder.start()
    assert building.wait(5)

    def child_value() -> str:
        import signal

        signal.alarm(5)  # a child stuck on the parent's lock dies, reporting nothing
        release.set()  # this process's build does not wait for the parent's thread
        return str(cache.get() == os.getpid())

    try:
        assert in_fork(child_value) == "True"
    finally:
        release.set()
        builder.join(5)
    assert cache.get() == os.getpid()
