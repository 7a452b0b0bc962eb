"""``HOOKFLEET_<PROVIDER>_RATE_LIMIT`` / ``_RATE_BURST``: off unless set, a burst of ten
seconds of the rate by default, and nonsense refused at startup."""

from __future__ import annotations

import pytest

from models.settings import ConfigError, Settings


def bucket(**env: str) -> tuple[float, int] | None:
    return Settings.from_env(env).provider("stripe").rate_bucket


def test_no_provider_is_limited_unless_its_rate_is_set() -> None:
    assert bucket() is None
    assert bucket(HOOKFLEET_STRIPE_RATE_LIMIT="0", HOOKFLEET_STRIPE_RATE_BURST="5") is None
    assert bucket(HOOKFLEET_RETELL_RATE_LIMIT="3") is None  # another provider's


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [("2.5", "", (2.5, 25)), ("0.01", "", (0.01, 1)), ("40", "7", (40.0, 7))],
)
def test_the_burst_is_ten_seconds_of_the_rate_unless_set(
    rate: str, burst: str, expected: tuple[float, int]
) -> None:
    assert bucket(HOOKFLEET_STRIPE_RATE_LIMIT=rate, HOOKFLEET_STRIPE_RATE_BURST=burst) == expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "-1"),
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "inf"),
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "nan"),
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "fast"),
        # Positive but so slow the bucket's arithmetic overflows in Redis (answered 503).
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "1e-16"),
        ("HOOKFLEET_STRIPE_RATE_LIMIT", "0.0009"),
        ("HOOKFLEET_STRIPE_RATE_BURST", "0"),
        ("HOOKFLEET_STRIPE_RATE_BURST", "2.5"),
    ],
)
def test_a_rate_or_burst_that_cannot_work_stops_the_process(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})
