"""The fault suite's order: rows that start servers and fleets before the short ones."""

from __future__ import annotations

from pathlib import Path

import pytest

FAULTS = Path(__file__).resolve().parent

SERVERS = frozenset({"mariadb_server", "database_url", "mariadb_url"})
"""Fixtures of the rows that start a fleet or the ``hookfleet`` command on a database."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within this folder's place in the run, its long rows (declared ``faults`` rows
    and rows on a database server: 10-100 s each) first and its in-process tests
    (parsers, a receiver in the test process, a Redis pair: about a second each) last,
    each kind in file order; tests elsewhere keep their place. ``--dist loadgroup``
    hands out work in this order (module groups first), so the short tests fill the
    end of a fault-suite run instead of a long row starting last while the other
    xdist worker sits idle (65 s of 638 in this round's ``-n 2`` run of tests/faults,
    the frozen-transaction and replay rows last)."""
    places = [i for i, item in enumerate(items) if FAULTS in item.path.parents]
    ours = sorted((items[i] for i in places), key=lambda item: not _starts_servers(item))
    for place, item in zip(places, ours, strict=True):
        items[place] = item


def _starts_servers(item: pytest.Item) -> bool:
    # The marks the test's own code declares: every test here also carries ``faults``
    # from its folder (tests/conftest.py), which says nothing about its length.
    declared = [
        *getattr(getattr(item, "obj", None), "pytestmark", []),
        *getattr(getattr(item, "module", None), "pytestmark", []),
    ]
    fault_row = any(mark.name == "faults" for mark in declared)
    return fault_row or bool(SERVERS & set(getattr(item, "fixturenames", ())))
