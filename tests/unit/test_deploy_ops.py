"""The Kubernetes, systemd and MariaDB files we ship agree with the code and each other:
every queue has a worker and a scaler, the scaler reads a list that tells the truth,
and the database takes every connection the pools may open."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.contract import QUEUES, Queue
from models.settings import Settings
from tests.processes import ROOT
from tests.servers import MariaDBServer, _binary

DEPLOY = ROOT / "deploy"


def manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container.get("env", [])}


def workers_by_queue() -> dict[str, dict[str, Any]]:
    found = {}
    for doc in manifests("workers.yaml"):
        command = doc["spec"]["template"]["spec"]["containers"][0]["command"]
        if "-Q" in command:
            found[command[command.index("-Q") + 1]] = doc
    return found


def test_every_queue_has_a_worker_and_a_keda_scaler_on_its_own_list() -> None:
    workers = workers_by_queue()
    scalers = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in manifests("keda.yaml")}

    assert set(workers) == set(QUEUES)
    for queue, worker in workers.items():
        scaler = scalers[worker["metadata"]["name"]]
        (trigger,) = scaler["spec"]["triggers"]
        assert (trigger["type"], trigger["metadata"]["listName"]) == ("redis", queue)
        env = container_env(worker)
        if queue == Queue.PROVISIONING:
            # Prefetch 1: reserved messages are only the running ones; LLEN is the backlog.
            assert env["HOOKFLEET_WORKER_PREFETCH"] == "1"
        else:
            # Batching reserves 2 x batch per process, invisible to LLEN: the scaler's
            # per-replica backlog must dwarf it or it reads a busy pod as idle.
            assert "HOOKFLEET_WORKER_PREFETCH" not in env
            command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
            reserved = Settings().prefetch_multiplier * int(
                command[command.index("--concurrency") + 1]
            )
            assert int(trigger["metadata"]["listLength"]) >= 5 * reserved
        assert env["HOOKFLEET_WORKER_METRICS_PORT"] == "9808"


def test_web_pods_are_probed_on_readyz_and_healthz_and_reached_by_the_service() -> None:
    (web,) = manifests("web.yaml")
    (service,) = manifests("service.yaml")
    container = web["spec"]["template"]["spec"]["containers"][0]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == web["spec"]["template"]["metadata"]["labels"]


def k8s_connections_at_most() -> int:
    """What deploy/k8s may open at its maxima, as deploy/mariadb.cnf adds it up."""
    (web,) = manifests("web.yaml")
    env = container_env(web)
    pool = int(env["HOOKFLEET_DB_POOL_SIZE"]) + int(env["HOOKFLEET_DB_MAX_OVERFLOW"])
    total = web["spec"]["replicas"] * int(env["WEB_CONCURRENCY"]) * 2 * pool
    scalers = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in manifests("keda.yaml")}
    for worker in workers_by_queue().values():
        env = container_env(worker)
        command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
        children = int(command[command.index("--concurrency") + 1])
        pods = scalers[worker["metadata"]["name"]]["spec"]["maxReplicaCount"]
        pool = int(env["HOOKFLEET_DB_POOL_SIZE"]) + int(env["HOOKFLEET_DB_MAX_OVERFLOW"])
        total += pods * children * pool
    return total


def cnf_value(name: str) -> str:
    match = re.search(rf"^{name}\s*=\s*(\S+)", (DEPLOY / "mariadb.cnf").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_mariadb_takes_every_connection_the_k8s_pools_may_open() -> None:
    assert k8s_connections_at_most() + 15 <= int(cnf_value("max_connections"))


def test_shipped_mariadb_config_is_what_the_server_runs_with(tmp_path: Path) -> None:
    server = MariaDBServer(
        tmp_path,
        defaults_file=DEPLOY / "mariadb.cnf",
        # Small enough for a test machine; everything else as shipped.
        extra_args=("--innodb-buffer-pool-size=128M", "--innodb-log-file-size=48M"),
    ).start()
    try:
        out = subprocess.run(
            [
                _binary("mariadb", "mysql"),
                "-uroot",
                f"-S{server.socket_path}",
                "-N",
                "-e",
                "SELECT @@max_connections, @@wait_timeout, @@character_set_server,"
                " @@max_allowed_packet, @@innodb_flush_log_at_trx_commit",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    finally:
        server.stop()

    max_connections, wait_timeout, charset, packet, flush = out
    assert int(max_connections) == int(cnf_value("max_connections"))
    assert int(wait_timeout) > Settings().db_pool_recycle_s
    assert charset == "utf8mb4" and flush == "1"
    # A call's row carries the largest body escaped twice over (README, Body limits).
    assert int(packet) >= 4 * Settings().largest_body_limit + 1024 * 1024


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize(
    "name", ["hookfleet-web.service", "hookfleet-worker@.service", "hookfleet-beat.service"]
)
def test_systemd_units_share_one_metrics_directory_emptied_before_they_start(name: str) -> None:
    text = (DEPLOY / "systemd" / name).read_text()

    assert "Environment=PROMETHEUS_MULTIPROC_DIR=/run/hookfleet/metrics" in text
    assert "hookfleet-metrics.service" in unit(name)["Unit"]["Requires"]
    assert (
        "/run/hookfleet/metrics" in (DEPLOY / "systemd" / "hookfleet-metrics.service").read_text()
    )


def test_systemd_worker_template_serves_the_queue_it_is_named_after() -> None:
    worker = unit("hookfleet-worker@.service")["Service"]["ExecStart"]
    target = (DEPLOY / "systemd" / "hookfleet.target").read_text()

    assert worker.endswith(" run worker_%i")  # the Procfile's worker_<queue>
    for queue in QUEUES:
        assert f"hookfleet-worker@{queue.removeprefix('hookfleet.')}.service" in target
