"""``/readyz``, ``/stats`` and ``hookfleet stats`` against real Redis and databases,
including the moments they exist for: a server down or frozen."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from ingest import create_app
from models.contract import QUEUES, Queue
from models.settings import Settings
from tests.helpers import OPS, hookfleet_here, post_json
from tests.processes import Processes, request
from tests.servers import MariaDBServer, RedisServer, clean_env
from workers.celery_app import celery_config


@pytest.fixture
def ops_env(settings_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {**settings_env, "HOOKFLEET_DATABASE_URL": database_url}


def test_ready_when_redis_and_database_answer(ops_env: dict[str, str]) -> None:
    response = create_app(ops_env).test_client().get("/readyz", base_url=OPS)

    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "checks": {"redis": {"ok": True}, "database": {"ok": True}},
    }


def test_not_ready_names_redis_when_it_is_stopped(
    redis_server: RedisServer, ops_env: dict[str, str]
) -> None:
    client = create_app(ops_env).test_client()
    redis_server.stop()  # the redis_url fixture starts it again for the next test

    started = time.monotonic()
    response = client.get("/readyz", base_url=OPS)
    metrics = client.get("/metrics", base_url=OPS).text

    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json["status"] == "not_ready"
    assert response.json["checks"]["redis"]["ok"] is False
    assert response.json["checks"]["database"] == {"ok": True}
    assert 'hookfleet_dependency_up{dependency="redis"} 0.0' in metrics


def test_not_ready_within_two_seconds_when_mariadb_is_frozen(
    mariadb_server: MariaDBServer, settings_env: dict[str, str]
) -> None:
    env = {**settings_env, "HOOKFLEET_DATABASE_URL": mariadb_server.create_database()}
    client = create_app(env).test_client()
    assert client.get("/readyz", base_url=OPS).status_code == 200  # a pooled connection exists now
    assert mariadb_server.proc is not None
    os.kill(mariadb_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = client.get("/readyz", base_url=OPS)
        elapsed = time.monotonic() - started
    finally:
        os.kill(mariadb_server.proc.pid, signal.SIGCONT)

    assert response.status_code == 503 and elapsed < 2.0
    assert response.json["checks"]["database"]["ok"] is False
    assert response.json["checks"]["redis"] == {"ok": True}


def test_stats_wants_the_admin_token_when_one_is_set(ops_env: dict[str, str]) -> None:
    client = create_app({**ops_env, "HOOKFLEET_ADMIN_TOKEN": "s3cret-admin"}).test_client()

    refused = client.get("/stats", base_url=OPS)
    wrong = client.get("/stats", base_url=OPS, headers={"Authorization": "Bearer nope"})
    allowed = client.get("/stats", base_url=OPS, headers={"Authorization": "Bearer s3cret-admin"})

    assert (refused.status_code, wrong.status_code, allowed.status_code) == (401, 401, 200)
    # The scheme in any case (RFC 9110 section 11.1), but a Bearer scheme it must be.
    spelled = [
        client.get("/stats", base_url=OPS, headers={"Authorization": value}).status_code
        for value in ("bearer s3cret-admin", "BEARER  s3cret-admin", "s3cret-admin", "Bearer")
    ]
    assert spelled == [200, 200, 401, 401]
    assert refused.json["error"]["code"] == "unauthorized"
    assert set(allowed.json["queues"]) == set(QUEUES)


def test_stats_are_cached_for_a_few_seconds(client: FlaskClient, ops_env: dict[str, str]) -> None:
    stats_client = create_app(ops_env).test_client()
    first = stats_client.get("/stats", base_url=OPS).json
    assert post_json(client, "/webhooks/standard", {"type": "t"}).status_code == 202

    again = stats_client.get("/stats", base_url=OPS).json

    assert again == first  # a busy dashboard costs Redis one reading per few seconds
    assert first["queues"][Queue.DEFAULT]["waiting"] == 0
    assert first["dead_letters"] == 0 and first["errors"] == {}


@pytest.mark.slow
def test_hookfleet_stats_prints_depths_rates_and_dead_letters(
    client: FlaskClient, ops_env: dict[str, str], backend: str
) -> None:
    for n in range(3):
        post_json(client, "/webhooks/standard", {"type": "t"}, **{"webhook-id": f"s{n}"})

    table = stats(ops_env, in_a_process=backend == "sqlite")
    as_json = stats(ops_env, "--json", in_a_process=backend == "sqlite")

    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line}
    assert lines[Queue.DEFAULT][1:3] == ["3", "0"]
    assert "dead letters: 0" in table.stdout
    assert "events recorded, last minute:" in table.stdout
    assert json.loads(as_json.stdout)["queues"][Queue.DEFAULT]["waiting"] == 3


@pytest.mark.slow
def test_hookfleet_stats_fails_loudly_when_redis_is_down(
    redis_server: RedisServer, ops_env: dict[str, str], backend: str
) -> None:
    redis_server.stop()

    done = stats(ops_env, in_a_process=backend == "sqlite")

    assert done.returncode == 1 and "redis unreachable" in done.stderr


def stats(env: dict[str, str], *args: str, in_a_process: bool) -> subprocess.CompletedProcess[str]:
    """``hookfleet stats args``: the console script as a process (the SQLite rows), or
    the same command line in this process (tests.helpers.hookfleet_here)."""
    if not in_a_process:
        return hookfleet_here(["stats", *args], None, clean_env(**env))
    hookfleet = str(Path(sys.executable).parent / "hookfleet")
    return subprocess.run(
        [hookfleet, "stats", *args], env=clean_env(**env), capture_output=True, text=True
    )


def test_beat_prunes_daily() -> None:
    schedule = celery_config(Settings())["beat_schedule"]

    assert {"task": "hookfleet.prune_events", "schedule": 86400.0} in schedule.values()


def test_ready_checks_the_dedup_redis_too_when_it_is_not_the_broker(
    ops_env: dict[str, str], redis_url: str
) -> None:
    env = {**ops_env, "HOOKFLEET_BROKER_URL": redis_url.rsplit("/", 1)[0] + "/1"}

    response = create_app(env).test_client().get("/readyz", base_url=OPS)

    assert response.status_code == 200
    assert set(response.json["checks"]) == {"redis", "dedup_redis", "database"}


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/stats"])
def test_operator_endpoints_are_a_json_404_off_the_ops_listener(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)  # the test client's port 80 is not the ops listener

    assert response.status_code == 404
    assert response.json is not None and response.json["error"]["code"] == "not_found"


@pytest.mark.e2e
# Which listener answers what does not depend on the database: SQLite only (/readyz on
# both backends is test_ready_when_redis_and_database_answer's).
@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_public_port_shows_webhooks_and_healthz_and_the_ops_port_the_rest(
    tmp_path: Path, redis_url: str, database_url: str
) -> None:
    fleet = Processes.for_servers(
        tmp_path / "fleet",
        HOOKFLEET_REDIS_URL=redis_url,
        HOOKFLEET_DATABASE_URL=database_url,
        HOOKFLEET_STANDARD_VERIFY="off",
        HOOKFLEET_ADMIN_TOKEN="s3cret-admin",
    )
    fleet.start("web")  # database_url is migrated already
    try:
        fleet.wait_for_web()
        public, ops = fleet.base_url, fleet.ops_url
        for path in ("/metrics", "/readyz", "/stats"):
            status, _, body = request(public, "GET", path)
            assert status == 404, (path, body)
            assert body["error"]["code"] == "not_found"
        assert request(public, "GET", "/healthz")[0] == 200
        delivery = {"type": "ping", "data": {}}
        status, _, _ = request(
            public, "POST", "/webhooks/standard", delivery, {"webhook-id": "evt_ops_1"}
        )
        assert status == 202

        status, _, metrics = request(ops, "GET", "/metrics")
        assert status == 200
        assert 'outcome="accepted",provider="standard"} 1.0' in metrics
        assert request(ops, "GET", "/readyz")[0] == 200
        assert request(ops, "GET", "/stats")[0] == 401
        bearer = {"Authorization": "Bearer s3cret-admin"}
        assert request(ops, "GET", "/stats", headers=bearer)[0] == 200
    finally:
        fleet.stop_all()


def gunicorn_bind(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    """``bind`` as gunicorn reads it from ingest.gunicorn_conf with ``env`` and no other
    HOOKFLEET_* variable: the config module imported afresh in this process (it reads
    the environment once, at import) and forgotten afterwards. Was a ``python -c``
    process each (~2 CPU-s); the import is the same code."""
    with monkeypatch.context() as patch:
        for name in os.environ:
            if name.startswith(("HOOKFLEET_", "OTEL_")):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        previous = sys.modules.pop("ingest.gunicorn_conf", None)
        try:
            return importlib.import_module("ingest.gunicorn_conf").bind
        finally:
            sys.modules.pop("ingest.gunicorn_conf", None)
            if previous is not None:
                sys.modules["ingest.gunicorn_conf"] = previous


def test_the_ops_listener_is_on_loopback_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PORT": "8123", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}

    default = gunicorn_bind(monkeypatch, **env)
    exposed = gunicorn_bind(monkeypatch, **env, HOOKFLEET_OPS_BIND="0.0.0.0:8123")

    assert default == ["0.0.0.0:8123", "127.0.0.1:9807"]
    # Explicitly exposed: one listener answering everything.
    assert exposed == ["0.0.0.0:8123"]
