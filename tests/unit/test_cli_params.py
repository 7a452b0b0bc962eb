"""The ``hookfleet`` command's shared parts: ages, times, and settings read once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from models.settings import Settings
from workers.cli.main import main
from workers.cli.params import Age, When, invocation_settings


@pytest.mark.parametrize("option", [["prune"], ["sweep", "--dry-run"]])
@pytest.mark.parametrize(
    ("age", "complaint"),
    [("soon", "not an age"), ("0d", "more than 0"), ("99999999999d", "more than 365000d")],
)
def test_an_unusable_older_than_is_refused_before_anything_runs(
    option: list[str], age: str, complaint: str
) -> None:
    result = CliRunner().invoke(main, [*option, "--older-than", age])

    assert result.exit_code == 2 and complaint in result.output


def test_a_bad_variable_ends_a_command_with_its_message_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["stats"], env={"HOOKFLEET_DB_POOL_SIZE": "ten"})

    assert result.exit_code == 1
    assert "HOOKFLEET_DB_POOL_SIZE must be a whole number" in result.output
    assert "Traceback" not in result.output


def test_one_invocation_reads_the_environment_once() -> None:
    seen: list[Settings] = []

    @click.group()
    def root() -> None:
        seen.append(invocation_settings())

    @root.command()
    def sub() -> None:
        seen.append(invocation_settings())

    result = CliRunner().invoke(root, ["sub"], env={"HOOKFLEET_BATCH_SIZE": "7"})

    assert result.exit_code == 0, result.output
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0].batch_size == 7


def test_ages_and_times_read_like_an_operator_writes_them() -> None:
    age, when = Age(), When()
    now = datetime.now(UTC)

    assert age.convert("90m", None, None) == timedelta(minutes=90)
    assert when.convert("2026-11-23T08:00", None, None) == datetime(2026, 11, 23, 8, tzinfo=UTC)
    assert abs(when.convert("24h", None, None) - (now - timedelta(hours=24))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "command",
    [
        ["events", "list", "--since", "99999999999d"],
        ["quarantine", "list", "--since", "99999999d"],
        ["replay", "--dry-run", "--status", "any", "--until", "3000000d"],
    ],
)
def test_an_age_past_any_date_is_refused_not_a_traceback(command: list[str]) -> None:
    result = CliRunner().invoke(main, command)

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # click's usage error, no traceback
    assert "Traceback" not in result.output
