"""Opt-in pytest plugin: the CPU each test costs, written per test for the README's
*Tests* profile (``-p tests.cpu_profile`` with ``HOOKFLEET_TEST_CPU_LOG=<directory>``).

A test's CPU is the user + system time of the pytest process and of every child process
it reaped while the test ran (``RUSAGE_CHILDREN`` before and after, as
tests/bench/process_start.py measures a start): a fleet started for a module counts in
the test during whose teardown it stops; the last test's teardown, which stops what the
session shared (its Redis and MariaDB, the signed fleet), is the line ``<session
teardown>``; the line ``<session>``, written when the session ends, holds the whole
process's CPU (collection included). Each line also says how many processes the
test started directly (``subprocess.Popen``: gunicorn and celery masters, servers,
console scripts; not their forked workers), by program name."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_STARTED: Counter[str] = Counter()
_original_init = subprocess.Popen.__init__
_SESSION_START: list[float] = []
_SESSION_TEARDOWN: list[float] = []
_PATCH = pytest.MonkeyPatch()


def _counting_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    _STARTED[_program(args)] += 1
    _original_init(self, args, *rest, **kwargs)


def _program(args: Any) -> str:
    words = [args] if isinstance(args, (str, bytes)) else list(args)
    if len(words) >= 3 and str(words[0]).endswith("bash") and words[1] == "-c":
        words = str(words[2]).split()
        words = words[1:] if words and words[0] == "exec" else words
    name = os.path.basename(str(words[0]).split()[0]) if words else "?"
    if name.startswith("python") and len(words) > 2 and words[1] == "-m":
        name = str(words[2])
    return name


def _cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _log() -> Path | None:
    directory = os.environ.get("HOOKFLEET_TEST_CPU_LOG")
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return Path(directory) / f"{worker}.jsonl"


def _write(row: dict[str, Any]) -> None:
    path = _log()
    if path is not None:
        with path.open("a") as out:
            out.write(json.dumps(row) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    _PATCH.setattr(subprocess.Popen, "__init__", _counting_init)
    _SESSION_START.append(_cpu())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _STARTED.clear()
    _SESSION_TEARDOWN.clear()
    before = _cpu()
    try:
        return (yield)
    finally:
        spent = _cpu() - before - sum(_SESSION_TEARDOWN)
        _write({"test": item.nodeid, "cpu": round(spent, 3), "started": dict(_STARTED)})
        if _SESSION_TEARDOWN:
            _write({"test": "<session teardown>", "cpu": round(sum(_SESSION_TEARDOWN), 3)})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The last test's teardown also stops what the session shared (its servers, the
    signed fleet): counted apart, not in that test."""
    before = _cpu()
    try:
        return (yield)
    finally:
        if nextitem is None:
            _SESSION_TEARDOWN.append(_cpu() - before)


def pytest_unconfigure(config: pytest.Config) -> None:
    _PATCH.undo()
    if _SESSION_START:
        _write({"test": "<session>", "cpu": round(_cpu() - _SESSION_START[0], 3), "started": {}})
