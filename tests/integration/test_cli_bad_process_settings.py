"""Settings that the per-host processes read (the SQLite file's directory, the phone
regions, gunicorn's sizes and addresses, the Procfile's worker concurrency): a value no
process could use is one line naming the variable, exit status 1, before anything
starts, at every entry point (the ``hookfleet`` commands, ``up`` and ``run``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.integration.test_cli_bad_settings import (
    BIN,
    HOOKFLEET,
    assert_refused,
    first_row_slow,
    run,
    run_for,
)
from tests.servers import clean_env, free_port

GUNICORN_ARGS = ["-c", "python:ingest.gunicorn_conf", "ingest:create_app()"]
GUNICORN_CONF = "ingest.gunicorn_conf"

BAD_VALUES = [
    ("HOOKFLEET_DATABASE_URL", "sqlite:////proc/x/hf.db"),
    ("HOOKFLEET_DATABASE_URL", "sqlite:////sys/hf.db"),
    ("HOOKFLEET_PHONE_REGIONS", "AT;DE"),
]


def gunicorn_here(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``gunicorn -c python:ingest.gunicorn_conf 'ingest:create_app()'`` (as :func:`run`
    starts it) in this process, as far as gunicorn reads its configuration: its own
    ``WSGIApplication`` parses the command line and imports the config module
    (gunicorn/app/base.py ``Application.load_config``), where a setting no receiver
    could use is refused (``ingest.gunicorn_conf._checked_settings``). It never serves:
    a configuration that passes returns here with status 0 (``run()`` is not called),
    which fails a test expecting the refusal. Output captured as in a process (click's
    CliRunner isolation), the exit status as the interpreter makes it for the
    ``SystemExit``. Spares a fresh interpreter's imports of gunicorn and the receiver
    (~1 CPU-s a row); :func:`run` keeps one real gunicorn row."""
    from gunicorn import config
    from gunicorn.app.wsgiapp import WSGIApplication

    environ = clean_env(XDG_STATE_HOME=str(cwd / "state"), HOME=str(cwd), **env)
    overrides: dict[str, str | None] = {name: None for name in os.environ if name not in environ}
    overrides.update(environ)
    # A module imports once per process: the config module must run again, on this
    # environment, and be forgotten afterwards.
    previous = sys.modules.pop(GUNICORN_CONF, None)
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.chdir(cwd),
        CliRunner().isolation(env=overrides) as (out, err, _),
    ):
        patch.setattr(sys, "argv", ["gunicorn", *GUNICORN_ARGS])
        patch.setattr(sys, "path", list(sys.path))  # gunicorn puts its --chdir first
        # --chdir's default is the directory gunicorn was imported in: this process's.
        patch.setattr(config.Chdir, "default", str(cwd))
        try:
            WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        finally:
            sys.modules.pop(GUNICORN_CONF, None)
            if previous is not None:
                sys.modules[GUNICORN_CONF] = previous
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["gunicorn", *GUNICORN_ARGS], status, stdout, stderr)


def _addresses() -> dict[str, str]:
    return {"PORT": str(free_port()), "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}"}


@pytest.mark.parametrize(("var", "value"), first_row_slow(BAD_VALUES, [v for _, v in BAD_VALUES]))
def test_every_entry_point_refuses_a_bad_value_before_starting_anything(
    var: str, value: str, tmp_path: Path
) -> None:
    env = {var: value, **_addresses()}
    launch = run_for((var, value), BAD_VALUES[0])
    assert_refused(launch([HOOKFLEET, "migrate"], tmp_path, **env), var)
    up = launch([HOOKFLEET, "up", "--port", env["PORT"]], tmp_path, **env)
    assert_refused(up, var)
    assert "stopping" not in up.stdout and "private redis" not in up.stdout, up.stdout
    for name in ("web", "worker_high"):
        assert_refused(launch([HOOKFLEET, "run", name], tmp_path, **env), var)
    assert list(tmp_path.iterdir()) == []  # no var/ (redis, metrics) left behind


@pytest.mark.slow  # a real hookfleet up
def test_up_names_the_database_it_cannot_reach_without_its_password(tmp_path: Path) -> None:
    closed = free_port()
    url = f"mysql+pymysql://hf:s3cret@127.0.0.1:{closed}/hf"
    env = {
        "HOOKFLEET_DATABASE_URL": url,
        "HOOKFLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **_addresses(),
    }
    up = run([HOOKFLEET, "up", "--port", env["PORT"]], tmp_path, **env)

    assert up.returncode == 1, up
    assert f"cannot reach the database at mysql+pymysql://hf:***@127.0.0.1:{closed}/hf" in (
        up.stderr
    ), up.stderr
    assert "s3cret" not in up.stderr + up.stdout


BAD_PROCESS_VALUES = [
    ("WEB_CONCURRENCY", "0"),
    ("WEB_CONCURRENCY", "abc"),
    ("WEB_CONCURRENCY", "-1"),
    ("HOOKFLEET_WEB_THREADS", "0"),
    ("HOOKFLEET_WEB_THREADS", "abc"),
    ("PORT", "99999"),
    ("PORT", "abc"),
    ("PORT", "0"),
    ("HOOKFLEET_OPS_BIND", "127.0.0.1:99999"),
    ("HOOKFLEET_OPS_BIND", "abc"),
    ("HOOKFLEET_BIND", "nonsense::"),
    ("HOOKFLEET_WORKER_CONCURRENCY", "abc"),
]


@pytest.mark.parametrize(
    ("var", "value"),
    first_row_slow(BAD_PROCESS_VALUES, [f"{k}={v}" for k, v in BAD_PROCESS_VALUES]),
)
def test_gunicorn_run_and_up_refuse_a_bad_process_setting_in_one_line(
    var: str, value: str, tmp_path: Path
) -> None:
    env = {**_addresses(), var: value}
    first = (var, value) == BAD_PROCESS_VALUES[0]
    # gunicorn itself reads WEB_CONCURRENCY as its default when it is imported (its
    # config.py: int(), then "Value must be positive"), before any config module: only
    # `hookfleet run web` can say abc or -1 in our words.
    if not (var == "WEB_CONCURRENCY" and not value.isdigit()):
        # A real gunicorn for the first row; gunicorn's own config loading in this
        # process for the others.
        if first:
            direct = run([str(BIN / "gunicorn"), *GUNICORN_ARGS], tmp_path, **env)
        else:
            direct = gunicorn_here(tmp_path, **env)
        assert_refused(direct, var)
        # Said before gunicorn logs anything: the one line is the whole answer.
        assert direct.stdout == "" and len(direct.stderr.strip().splitlines()) == 1, direct
    launch = run_for((var, value), BAD_PROCESS_VALUES[0])
    for name in ("web", "worker_high"):
        assert_refused(launch([HOOKFLEET, "run", name], tmp_path, **env), var)
    up = launch([HOOKFLEET, "up", "--port", str(free_port())], tmp_path, **env)
    assert_refused(up, var)
    assert "private redis" not in up.stdout and "stopping" not in up.stdout, up.stdout
    assert list(tmp_path.iterdir()) == []  # no var/metrics left behind


@pytest.mark.parametrize(
    "concurrency", first_row_slow([("0",), ("65",), ("100000",)], ["0", "65", "100000"])
)
def test_up_refuses_a_worker_concurrency_past_its_bound_before_starting(
    concurrency: str, tmp_path: Path
) -> None:
    # 100000 processes per worker were accepted and died of EMFILE.
    launch = run_for(concurrency, "0")
    up = launch([HOOKFLEET, "up", "--concurrency", concurrency, "--var-dir", "var"], tmp_path)

    assert up.returncode == 2, up
    assert "--concurrency" in up.stderr and "1<=x<=64" in up.stderr, up.stderr
    assert "private redis" not in up.stdout, up.stdout
    assert list(tmp_path.iterdir()) == []
