"""The circuit breaker's state is shared through Redis: what one process learned, another
process obeys; an operator sees it and resets it with the ``hookfleet`` command."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from models.engine import make_engine, make_sessionmaker
from models.settings import Settings
from tests.databases import copy_sqlite
from tests.helpers import OPS, hookfleet_here
from tests.provisioning_helpers import env_for, seed_branch, settings_for
from tests.servers import RedisServer, _binary, clean_env, free_port, wait_until
from tests.standin import Reply, StandIn
from workers.outbound.breaker import breaker_states, breaker_status
from workers.outbound.errors import ApiRejected, CircuitOpen
from workers.outbound.retell import RetellApi

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")


@pytest.fixture
def database(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite file of this test's own (a copy of the session's template)."""
    return copy_sqlite(sqlite_template, tmp_path)


@pytest.fixture
def sentinel_url(redis_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """A real ``redis-server --sentinel`` naming the test Redis as service ``hf``: the
    ``redis+sentinel://`` URL of that Redis's database 0."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor hf 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(
        [_binary("redis-server"), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)

    def names_the_primary() -> bool:
        try:
            return client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "hf") is not None
        except redis.RedisError:
            return False

    try:
        wait_until(names_the_primary, 30, "sentinel to answer", interval=0.1)
        yield f"redis+sentinel://127.0.0.1:{port}/hf/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def hookfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script, as an operator (or another worker host) runs it."""
    return subprocess.run(
        [HOOKFLEET, *args], env=clean_env(**env), capture_output=True, text=True, timeout=60
    )


def hookfleet_in_test(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The same command line in this process (tests.helpers.hookfleet_here), for the
    tests about what a command prints: another process obeying the breaker is
    test_another_process_sees_the_open_breaker_and_reset_closes_it's, with processes."""
    return hookfleet_here(args, None, clean_env(**env))


def test_permanent_5xx_opens_the_breaker_after_fail_max_attempts(
    redis_url: str, database: str, standin: StandIn
) -> None:
    settings = settings_for(database, redis_url, standin, breaker_fail_max=3)
    standin.script("POST", "/v2/list-agents", *[Reply(503)] * 10)

    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()  # three attempts: the third one trips the breaker

    assert len(standin.requests) == 3
    assert breaker_states(settings) == {"retell": "open", "calcom": "closed"}
    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()
    assert len(standin.requests) == 3  # refused without calling


def test_4xx_answers_never_count_against_the_breaker(
    redis_url: str, database: str, standin: StandIn
) -> None:
    settings = settings_for(database, redis_url, standin, breaker_fail_max=2, retell_api_key="bad")

    for _ in range(5):
        with pytest.raises(ApiRejected):
            RetellApi(settings).ping()

    assert len(standin.requests) == 5  # not retried either
    assert breaker_status("retell", settings).state == "closed"


@pytest.mark.slow
def test_another_process_sees_the_open_breaker_and_reset_closes_it(
    redis_url: str, database: str, standin: StandIn
) -> None:
    settings = settings_for(database, redis_url, standin, breaker_fail_max=3)
    env = env_for(database, redis_url, standin, HOOKFLEET_BREAKER_FAIL_MAX="3")
    engine = make_engine(settings)
    branch_id = seed_branch(make_sessionmaker(engine))
    engine.dispose()
    standin.script("POST", "/v2/list-agents", *[Reply(503)] * 3)
    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()
    before = len(standin.requests)

    status = hookfleet("breaker", "status", env=env)
    checked = hookfleet("provision", str(branch_id), "--check-connectivity", env=env)

    assert status.returncode == 0, status.stderr
    assert [line.split()[:3] for line in status.stdout.splitlines()[1:]] == [
        ["retell", "open", "3"],
        ["calcom", "closed", "0"],
    ]
    assert checked.returncode == 1
    assert "RETELL_CIRCUIT_OPEN" in checked.stdout
    assert "hookfleet breaker reset retell" in checked.stdout
    # The other process asked Cal.com, but sent Retell nothing: the breaker held.
    assert [r.path for r in standin.requests[before:]] == ["/v2/event-types/1001"]

    reset = hookfleet("breaker", "reset", "retell", env=env)

    assert (reset.returncode, reset.stdout) == (0, "retell: closed\n")
    assert breaker_status("retell", settings).state == "closed"
    RetellApi(settings).ping()
    assert standin.requests[-1].path == "/v2/list-agents"


@pytest.mark.slow
def test_provision_command_prints_findings_and_provisions(
    redis_url: str, database: str, standin: StandIn
) -> None:
    env = env_for(database, redis_url, standin)
    engine = make_engine(Settings(database_url=database))
    sessions = make_sessionmaker(engine)
    broken = seed_branch(sessions, phone="030 12", working_hours={"mon": [["18:00", "09:00"]]})
    good = seed_branch(sessions)
    engine.dispose()

    refused = hookfleet_in_test("provision", str(broken), env=env)
    dry = hookfleet_in_test("provision", str(good), "--dry-run", env=env)
    done = hookfleet_in_test("provision", str(good), "--check-connectivity", env=env)
    again = hookfleet_in_test("provision", str(good), env=env)

    assert refused.returncode == 1
    assert "BRANCH_PHONE_INVALID" in refused.stdout
    assert "Branch phone '030 12' is not a valid number in DE, AT, CH" in refused.stdout
    assert "WORKING_HOURS_INTERVAL_EMPTY" in refused.stdout
    assert "refused: fix the errors above" in refused.stderr
    assert dry.returncode == 0, dry.stderr
    assert "Dry run: nothing was sent" in dry.stdout and '"agent_name"' in dry.stdout
    assert done.returncode == 0, done.stderr
    [agent_id] = standin.agents
    assert f"created: branch {good} is answered by agent {agent_id}" in done.stdout
    assert again.returncode == 0 and f"unchanged: branch {good}" in again.stdout
    assert len(standin.agents) == 1


@pytest.mark.e2e
def test_provision_queue_runs_on_the_procfile_provisioning_worker(
    tmp_path: Path, redis_url: str, database: str, standin: StandIn
) -> None:
    from tests.processes import Processes

    env = env_for(database, redis_url, standin)
    engine = make_engine(Settings(database_url=database))
    branch_id = seed_branch(make_sessionmaker(engine))
    engine.dispose()
    processes = Processes.for_servers(tmp_path / "fleet", **env)
    processes.start("worker_provisioning")
    try:
        processes.wait_for_worker("worker_provisioning")
        done = hookfleet("provision", str(branch_id), "--queue", "--wait", "60", env=env)
    finally:
        processes.stop_all()

    assert done.returncode == 0, done.stdout + done.stderr
    [agent_id] = standin.agents
    assert f"active: agent {agent_id}" in done.stdout
    assert "hookfleet.provision_branch" in processes.log("worker_provisioning")


def test_the_receivers_metrics_show_the_breaker_state_every_worker_shares(
    redis_url: str, database: str, standin: StandIn
) -> None:
    from ingest import create_app

    settings = settings_for(database, redis_url, standin, breaker_fail_max=2)
    standin.script("POST", "/v2/list-agents", *[Reply(503)] * 10)
    client = create_app(
        {"HOOKFLEET_REDIS_URL": redis_url, "HOOKFLEET_DATABASE_URL": database}
    ).test_client()

    def gauge(name: str) -> str:
        text = client.get("/metrics", base_url=OPS).get_data(as_text=True)
        line = next(
            x
            for x in text.splitlines()
            if x.startswith(f'hookfleet_breaker_state{{name="{name}"}}')
        )
        return line.split()[-1]

    assert (gauge("retell"), gauge("calcom")) == ("0.0", "0.0")
    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()  # this process trips it; the receiver reads Redis

    assert (gauge("retell"), gauge("calcom")) == ("2.0", "0.0")


def test_breaker_status_shows_the_breaker_it_is_named_and_refuses_an_unknown_one(
    redis_url: str, database: str, standin: StandIn
) -> None:
    settings = settings_for(database, redis_url, standin, breaker_fail_max=3)
    env = env_for(database, redis_url, standin, HOOKFLEET_BREAKER_FAIL_MAX="3")
    standin.script("POST", "/v2/list-agents", *[Reply(503)] * 3)
    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()

    retell = hookfleet_in_test("breaker", "status", "retell", env=env)
    calcom = hookfleet_in_test("breaker", "status", "calcom", env=env)
    unknown = hookfleet_in_test("breaker", "status", "stripe", env=env)
    unknown_reset = hookfleet_in_test("breaker", "reset", "stripe", env=env)

    assert retell.returncode == 0, retell.stderr
    assert [line.split()[:3] for line in retell.stdout.splitlines()[1:]] == [
        ["retell", "open", "3"]
    ]
    assert [line.split()[:3] for line in calcom.stdout.splitlines()[1:]] == [
        ["calcom", "closed", "0"]
    ]
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.splitlines() == ["Error: no breaker 'stripe': one of retell, calcom"]
    # reset answers an unknown name the same way (it used to be a usage error, exit 2).
    assert (unknown_reset.returncode, unknown_reset.stdout) == (1, "")
    assert unknown_reset.stderr == unknown.stderr


@pytest.mark.slow
def test_the_breaker_works_through_a_sentinel_url(
    redis_url: str, sentinel_url: str, database: str, standin: StandIn
) -> None:
    settings = settings_for(database, sentinel_url, standin, breaker_fail_max=3)
    env = env_for(database, sentinel_url, standin, HOOKFLEET_BREAKER_FAIL_MAX="3")
    standin.script("POST", "/v2/list-agents", *[Reply(503)] * 3)
    with pytest.raises(CircuitOpen):
        RetellApi(settings).ping()  # the worker's breaker, its state kept via the Sentinel

    status = hookfleet_in_test("breaker", "status", "retell", env=env)
    reset = hookfleet_in_test("breaker", "reset", "retell", env=env)

    # The same state as the primary's own URL shows: one breaker, whichever URL names it.
    plain = settings_for(database, redis_url, standin, breaker_fail_max=3)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split()[:3] == ["retell", "open", "3"]
    assert (reset.returncode, reset.stdout) == (0, "retell: closed\n"), reset.stderr
    assert breaker_status("retell", plain).state == "closed"
