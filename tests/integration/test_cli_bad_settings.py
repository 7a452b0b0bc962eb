"""Every entry point answers a URL setting no process could use with one line naming
the setting (password hidden), exit status 1, no traceback, and leaves nothing behind:
the ``hookfleet`` commands, ``hookfleet up``, ``hookfleet run <process>`` (the Procfile's
gunicorn and Celery), and gunicorn or ``celery worker`` started directly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers import hookfleet_here
from tests.integration.test_cli_unreachable import HOOKFLEET, assert_one_clear_line, hookfleet
from tests.servers import clean_env, free_port
from workers.cli.main import main

BIN = Path(sys.executable).parent
BAD_URLS = [
    ("HOOKFLEET_DATABASE_URL", "mysql://hookfleet:s3cret@db/hookfleet"),  # no MySQLdb
    ("HOOKFLEET_DATABASE_URL", "postgresql://hookfleet:s3cret@db/hookfleet"),
    ("HOOKFLEET_DATABASE_URL", "garbage"),
    ("HOOKFLEET_DATABASE_URL", "sqlite:////etc/hostname/x.db"),
    ("HOOKFLEET_DATABASE_URL", "mysql+pymysql://hookfleet:s3cret@db:notaport/hookfleet"),
    ("HOOKFLEET_REDIS_URL", "garbage://x"),
    ("HOOKFLEET_REDIS_URL", "redis://:s3cret@cache:notaport"),
    ("HOOKFLEET_REDIS_URL", "http://x"),
    ("HOOKFLEET_BROKER_URL", "redis://cache:99999/0"),
    # Query options the driver refuses in connect(), before dialling: `migrate` tracebacks.
    ("HOOKFLEET_DATABASE_URL", "mysql+pymysql://hookfleet:s3cret@db/hookfleet?charset=bogus"),
    ("HOOKFLEET_DATABASE_URL", "mysql+pymysql://hookfleet:s3cret@db/x?connect_timeout=abc"),
    # Shapes redis-py refuses at the first command.
    ("HOOKFLEET_REDIS_URL", "REDIS://:s3cret@cache:6379/15"),
    ("HOOKFLEET_REDIS_URL", "redis+sentinel://:s3cret@h:1/mymaster/x"),
    ("HOOKFLEET_REDIS_URL", "redis://:s3cret@cache/1?socket_timeout=abc"),
]
COMMANDS = [
    ["events", "list"],
    ["quarantine", "list"],
    ["quarantine", "release", "--dry-run"],
    ["breaker", "status"],
    ["replay", "runs"],
    ["migrate"],
]


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = clean_env(XDG_STATE_HOME=str(cwd / "state"), HOME=str(cwd), **env)
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=90)


def run_here(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """:func:`run` of a ``hookfleet`` command line in this process
    (tests.helpers.hookfleet_here): the same code below ``main()`` without a fresh
    interpreter's imports (~0.5 CPU-s each)."""
    assert argv[0] == HOOKFLEET, argv
    environ = clean_env(XDG_STATE_HOME=str(cwd / "state"), HOME=str(cwd), **env)
    return hookfleet_here(argv[1:], cwd, environ)


def first_row_slow(rows: list[Any], ids: list[str]) -> list[Any]:
    """``rows`` as parameters, the first (run as real processes by :func:`run_for`)
    marked ``slow`` for the inner loop."""
    return [
        pytest.param(*row, id=name, marks=pytest.mark.slow if n == 0 else ())
        for n, (row, name) in enumerate(zip(rows, ids, strict=True))
    ]


def run_for(row: object, first: object) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Real processes for ``first``, a family's first row (the console script's entry
    point and the interpreter's exit, as a user meets them); this process for its other
    rows."""
    return run if row == first else run_here


def assert_refused(result: subprocess.CompletedProcess[str], var: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert var in last, result.stderr
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(("var", "url"), BAD_URLS, ids=[u for _, u in BAD_URLS])
def test_a_command_answers_a_bad_url_with_one_line_naming_it(
    var: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path), **{var: url})
    for name in [n for n in os.environ if n.startswith(("HOOKFLEET_", "OTEL_"))]:
        monkeypatch.delenv(name)
    for args in COMMANDS:
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1, (args, result.output, result.exception)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and var in errors[0], (args, result.stderr)
        assert "s3cret" not in result.output
    assert list(tmp_path.iterdir()) == []  # no var/, no SQLite file


@pytest.mark.slow  # a real process
def test_one_command_line_in_a_real_process_says_the_same(tmp_path: Path) -> None:
    result = hookfleet(["events", "list"], tmp_path, HOOKFLEET_REDIS_URL="http://x")
    assert_one_clear_line(result, "HOOKFLEET_REDIS_URL must start with redis://")


@pytest.mark.parametrize(
    ("var", "url"), first_row_slow(BAD_URLS[::2], [u for _, u in BAD_URLS[::2]])
)
def test_up_and_run_answer_a_bad_url_before_starting_anything(
    var: str, url: str, tmp_path: Path
) -> None:
    env = {var: url, "PORT": str(free_port()), "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}"}
    launch = run_for((var, url), BAD_URLS[0])
    up = launch([HOOKFLEET, "up", "--port", env["PORT"]], tmp_path, **env)
    assert_refused(up, var)
    # Nothing started, so nothing said about stopping it.
    assert "stopping" not in up.stdout and "stopped" not in up.stdout, up.stdout
    for name in ("web", "worker_high", "beat"):
        assert_refused(launch([HOOKFLEET, "run", name], tmp_path, **env), var)
    assert list(tmp_path.iterdir()) == []  # no var/ (nor var/metrics) left behind


@pytest.mark.slow  # gunicorn and celery processes
def test_gunicorn_and_celery_started_directly_answer_a_bad_url_in_one_line(
    tmp_path: Path,
) -> None:
    env = {
        "HOOKFLEET_DATABASE_URL": "mysql+pymysql://hookfleet:s3cret@db:notaport/hookfleet",
        "PORT": str(free_port()),
        "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}",
    }
    gunicorn = [str(BIN / "gunicorn"), "-c", "python:ingest.gunicorn_conf", "ingest:create_app()"]
    assert_refused(run(gunicorn, tmp_path, **env), "HOOKFLEET_DATABASE_URL")
    celery = [str(BIN / "celery"), "-A", "workers.celery_app", "--quiet", "worker"]
    assert_refused(run([*celery, "-Q", "hookfleet.high"], tmp_path, **env), "DATABASE_URL")
    assert list(tmp_path.iterdir()) == []  # gunicorn made no var/metrics


@pytest.mark.slow  # hookfleet run web and gunicorn processes
def test_a_receiver_that_cannot_boot_leaves_no_metrics_directory(tmp_path: Path) -> None:
    env = {"PORT": str(free_port()), "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}"}
    # A provider refusing its secret (gunicorn's on_starting check), and an app that
    # fails to load in every worker (gunicorn halts: "App failed to load").
    refused = run([HOOKFLEET, "run", "web"], tmp_path, HOOKFLEET_STANDARD_SECRETS="short", **env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    gunicorn = [str(BIN / "gunicorn"), "-c", "python:ingest.gunicorn_conf", "ingest:nothing()"]
    failed = run(gunicorn, tmp_path, **env)
    assert failed.returncode != 0, failed
    assert not (tmp_path / "var").exists()
