"""The receiver process's own count of refusals per second, in front of Redis's."""

from __future__ import annotations

import pytest

from ingest import quarantine
from ingest.quarantine import _LocalRate


def test_past_the_rate_a_process_stops_asking_until_the_next_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_000.2]
    monkeypatch.setattr(quarantine.time, "time", lambda: clock[0])
    rate = _LocalRate(3)

    first_second = [rate.allow("stripe") for _ in range(5)]
    other_provider = rate.allow("retell")
    clock[0] = 1_001.0
    next_second = [rate.allow("stripe") for _ in range(4)]

    assert first_second == [True, True, True, False, False]
    assert other_provider is True
    assert next_second == [True, True, True, False]
