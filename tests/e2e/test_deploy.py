"""What we ship for operators starts and means what the README says."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from models.settings import QUEUES
from tests.processes import ROOT, procfile, request
from tests.servers import clean_env, free_port, wait_until
from workers.cli.up import read_procfile


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


def procfile_argv(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile's ``name`` as ``sh`` would split it, ``${VAR:-default}`` read
    from ``env``."""
    command = read_procfile()[name]
    expanded = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), command)
    return shlex.split(expanded)


def test_kubernetes_containers_run_the_procfile_command_lines() -> None:
    """The Procfile is the one source of process command lines: every Deployment's
    container runs one of its entries exactly (with the container's environment)."""
    by_name = {
        "hookfleet-web": "web",
        "hookfleet-beat": "beat",
        **{f"hookfleet-worker-{q.split('.')[1]}": f"worker_{q.split('.')[1]}" for q in QUEUES},
    }
    seen = set()
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            container = doc["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            entry = by_name[doc["metadata"]["name"]]
            assert container["command"] == procfile_argv(entry, env), path.name
            seen.add(entry)
    assert seen == set(read_procfile())


@pytest.mark.parametrize(
    ("unit_name", "entries"),
    [
        ("hookfleet-web.service", ["web"]),
        ("hookfleet-beat.service", ["beat"]),
        ("hookfleet-worker@.service", [n for n in read_procfile() if n.startswith("worker_")]),
    ],
)
def test_systemd_units_run_the_procfile_entries_by_name(unit_name: str, entries: list[str]) -> None:
    exec_start = next(
        line.removeprefix("ExecStart=")
        for line in (ROOT / "deploy" / "systemd" / unit_name).read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    program, run, name = exec_start.split()

    assert (Path(program).name, run) == ("hookfleet", "run")
    # The worker template's %i is the queue: hookfleet-worker@low runs worker_low.
    assert [name.replace("%i", e.removeprefix("worker_")) for e in entries] == entries


def test_hookfleet_run_becomes_the_procfiles_web_process(tmp_path: Path, redis_url: str) -> None:
    port, ops = free_port(), free_port()
    env = clean_env(
        HOOKFLEET_REDIS_URL=redis_url,
        PORT=str(port),
        HOOKFLEET_OPS_BIND=f"127.0.0.1:{ops}",
        HOOKFLEET_VAR_DIR=str(tmp_path),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "hookfleet"), "run", "web"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}"), 30, "hookfleet run web")
        # The same process is gunicorn's master now (exec, not a child), so systemd's
        # and the kubelet's SIGTERM reach gunicorn itself.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"gunicorn") for part in cmdline[:2]), cmdline
        assert request(f"http://127.0.0.1:{ops}", "GET", "/metrics")[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def _answers(base_url: str) -> bool:
    try:
        return request(base_url, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_hookfleet_run_refuses_a_name_the_procfile_lacks() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hookfleet"), "run", "nope"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert done.returncode != 0 and "no 'nope' in" in done.stderr
    assert "web" in done.stderr and "beat" in done.stderr
