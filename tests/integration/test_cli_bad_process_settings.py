"""Settings that the per-host processes read (the SQLite file's directory, the phone
regions, gunicorn's sizes and addresses, the Procfile's worker concurrency): a value no
process could use is one line naming the variable, exit status 1, before anything
starts, at every entry point (the ``hookfleet`` commands, ``up`` and ``run``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli_bad_settings import HOOKFLEET, assert_refused, run
from tests.servers import free_port

BAD_VALUES = [
    ("HOOKFLEET_DATABASE_URL", "sqlite:////proc/x/hf.db"),
    ("HOOKFLEET_DATABASE_URL", "sqlite:////sys/hf.db"),
    ("HOOKFLEET_PHONE_REGIONS", "AT;DE"),
]


def _addresses() -> dict[str, str]:
    return {"PORT": str(free_port()), "HOOKFLEET_OPS_BIND": f"127.0.0.1:{free_port()}"}


@pytest.mark.parametrize(("var", "value"), BAD_VALUES, ids=[v for _, v in BAD_VALUES])
def test_every_entry_point_refuses_a_bad_value_before_starting_anything(
    var: str, value: str, tmp_path: Path
) -> None:
    env = {var: value, **_addresses()}
    assert_refused(run([HOOKFLEET, "migrate"], tmp_path, **env), var)
    up = run([HOOKFLEET, "up", "--port", env["PORT"]], tmp_path, **env)
    assert_refused(up, var)
    assert "stopping" not in up.stdout and "private redis" not in up.stdout, up.stdout
    for name in ("web", "worker_high"):
        assert_refused(run([HOOKFLEET, "run", name], tmp_path, **env), var)
    assert list(tmp_path.iterdir()) == []  # no var/ (redis, metrics) left behind


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
