"""Every number a ``hookfleet`` option takes is checked by click: a negative or zero
count, limit, port or rate that means nothing is a usage error (exit status 2) naming
the option, before the command touches anything; so are the rate settings."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from models.settings import ConfigError, Settings
from workers.cli.main import main

REFUSED = [
    (["quarantine", "list", "--limit", "-1"], "--limit"),
    (["events", "list", "--limit", "-1"], "--limit"),
    (["events", "list", "--after", "-1"], "--after"),
    (["dlq", "list", "--limit", "-5"], "--limit"),
    (["replay", "--all-dead", "--rate", "-1"], "--rate"),
    (["replay", "--all-dead", "--rate", "inf"], "--rate"),
    (["replay", "--all-dead", "--rate", "nan"], "--rate"),
    (["replay", "--all-dead", "--rate", "1e-9"], "--rate"),
    (["replay", "--all-dead", "--batch-size", "0"], "--batch-size"),
    (["replay", "--resume", "0"], "--resume"),
    (["replay", "--resume", "-3"], "--resume"),
    (["replay", "runs", "--limit", "0"], "--limit"),
    (["replay", "runs", "--limit", "-1"], "--limit"),
    (["up", "--port", "0"], "--port"),
    (["up", "--port", "70000"], "--port"),
    (["up", "--concurrency", "0"], "--concurrency"),
    (["prune", "--batch-size", "0"], "--batch-size"),
    (["prune", "--batch-size", "-10"], "--batch-size"),
    (["provision", "0"], "BRANCH_ID"),
    (["provision", "1", "--queue", "--wait", "0"], "--wait"),
    (["provision", "1", "--queue", "--wait", "-1"], "--wait"),
    (["integrity", "check", "--batch-size", "0"], "--batch-size"),
    (["integrity", "check", "--limit", "-1"], "--limit"),
]


@pytest.mark.parametrize(("args", "option"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_count_limit_port_or_rate_that_means_nothing_is_a_usage_error(
    args: list[str], option: str
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"Invalid value for '{option}'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("HOOKFLEET_REPLAY_RATE", "-1"),
        ("HOOKFLEET_REPLAY_RATE", "inf"),
        ("HOOKFLEET_REPLAY_RATE", "1e-9"),
        ("HOOKFLEET_REDIS_TIMEOUT_S", "-1"),
        ("HOOKFLEET_DB_POOL_TIMEOUT_S", "nan"),
        ("HOOKFLEET_OUTBOUND_TIMEOUT_S", "-0.5"),
        ("HOOKFLEET_WORKER_SOFT_SHUTDOWN_S", "inf"),
    ],
)
def test_a_negative_or_endless_rate_or_duration_setting_is_refused(var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: raw})


def test_zero_still_means_no_replay_cap() -> None:
    assert Settings.from_env({"HOOKFLEET_REPLAY_RATE": "0"}).replay_rate_per_s == 0
