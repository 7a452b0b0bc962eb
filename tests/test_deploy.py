"""What we ship for operators starts and means what the README says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from tests.processes import ROOT, procfile
from tests.servers import free_port, wait_until


def test_shipped_redis_config_never_evicts_and_keeps_an_append_only_file(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            str(ROOT / "deploy" / "redis.conf"),
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        wait_until(lambda: _pings(client), 15, "redis-server with deploy/redis.conf")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_procfile_has_every_process_the_fleet_needs() -> None:
    entries = procfile()

    assert set(entries) == {
        "web",
        "worker_high",
        "worker_default",
        "worker_low",
        "worker_provisioning",
        "beat",
    }
    for queue in ("high", "default", "low", "provisioning"):
        assert f"-Q hookfleet.{queue}" in entries[f"worker_{queue}"]
    assert "ingest.gunicorn_conf" in entries["web"]
