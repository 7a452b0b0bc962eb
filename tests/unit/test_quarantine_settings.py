"""Quarantine knobs (and the other knobs that become a Redis TTL) are judged at startup:
a value Redis would overflow on is refused with one line, not accepted only to make
every later write fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.settings import ConfigError, Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "variable",
    [
        "HOOKFLEET_QUARANTINE_DAYS",
        "HOOKFLEET_QUARANTINE_MAX_DELIVERIES",
        "HOOKFLEET_QUARANTINE_MAX_BYTES",
        "HOOKFLEET_QUARANTINE_RATE",
        "HOOKFLEET_STRIPE_DEDUP_TTL_S",
        "HOOKFLEET_INBOUND_CACHE_TTL_S",
    ],
)
def test_a_value_past_what_redis_can_take_is_refused_at_startup(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} must be at most "):
        Settings.from_env({variable: "999999999999"})


def test_a_kept_body_is_at_most_an_eighth_of_the_byte_budget() -> None:
    lowered = Settings.from_env({"HOOKFLEET_QUARANTINE_MAX_BYTES": "80000"})
    default = Settings.from_env({})

    assert lowered.quarantine_body_cap == 10_000
    assert default.quarantine_body_cap == default.quarantine_max_body_bytes == 1024 * 1024


@pytest.mark.slow  # the receiver as a process
def test_the_receiver_says_a_bad_setting_once_and_exits() -> None:
    env = {
        **os.environ,
        "HOOKFLEET_QUARANTINE_DAYS": "999999999999",
        "PORT": str(free_port()),
        "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    done = subprocess.run(
        [str(gunicorn), "-c", "python:ingest.gunicorn_conf", "ingest:create_app()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("HOOKFLEET_QUARANTINE_DAYS must be at most") == 1
    assert "Traceback" not in done.stderr + done.stdout
