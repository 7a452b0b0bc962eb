"""The outbound client on httpx: which answers are retried, how long it waits
(``Retry-After``), what the breaker counts, and that connections are pooled.

Unit tests swap the transport (``httpx.MockTransport``), not the server; the pooling
and provisioning tests use the stand-in, a real HTTP server on loopback.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.business import Agent, AgentStatus
from models.engine import make_engine, make_sessionmaker
from models.settings import OutboundSettings, Settings
from tests.databases import copy_sqlite
from tests.provisioning_helpers import env_for, seed_branch, settings_for
from tests.servers import clean_env
from tests.standin import Reply, StandIn
from workers.outbound.breaker import breaker_status
from workers.outbound.calcom import CalcomApi
from workers.outbound.errors import ApiRateLimited, ApiRejected, ApiUnavailable, CircuitOpen
from workers.outbound.jsonapi import pooled_client
from workers.outbound.policy import RETRY_AFTER_MAX_S, parse_retry_after, task_countdown
from workers.outbound.retell import RetellApi
from workers.provisioning.provisioner import provision_branch

HOOKFLEET = str(Path(sys.executable).parent / "hookfleet")


def settings_with(redis_url: str, **outbound: object) -> Settings:
    values: dict[str, object] = {
        "retell_api_url": "https://retell.test",
        "retell_api_key": "key_unit",
        "calcom_api_url": "https://cal.test",
        "calcom_api_key": "cal_unit",
        "retries": 3,
        "backoff_s": 0.01,
        "breaker_fail_max": 50,
    }
    return Settings(redis_url=redis_url, outbound=OutboundSettings(**(values | outbound)))


class Scripted:
    """A MockTransport handler answering with ``answers`` in turn (then 200 {}), and
    remembering every request with its arrival time."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((time.monotonic(), request))
        return self.answers.pop(0) if self.answers else httpx.Response(200, json={})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def too_many(retry_after: str | None = None, status: int = 429) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"message": "slow down"}, headers=headers)


# --- Retry-After, both forms (RFC 9110 §10.2.3) -----------------------------------------

NOW = datetime(1994, 11, 6, 8, 49, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 30.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 30.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 30.0),  # obsolete asctime, no zone: GMT
        ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0),  # in the past: now
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str, seconds: float) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5", "Sun, 99 Nov 1994"])
def test_an_unreadable_retry_after_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None


def test_a_task_waits_what_the_service_asked_but_never_past_the_cap() -> None:
    asked = ApiRateLimited("retell", "429", status=429, retry_after_s=45)
    too_long = ApiRateLimited("retell", "429", status=429, retry_after_s=86_400)
    silent = ApiUnavailable("retell", "503", status=503)

    assert task_countdown(asked, fallback_s=62) == 45
    assert task_countdown(too_long, fallback_s=62) == RETRY_AFTER_MAX_S
    assert task_countdown(silent, fallback_s=62) == 62


# --- what is retried, and when ----------------------------------------------------------


def test_a_rate_limited_read_is_retried_after_the_retry_after_it_was_given(
    redis_url: str,
) -> None:
    service = Scripted(too_many("1"))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    retell.get_agent("agent_1")

    (first, _), (second, _) = service.seen
    assert second - first >= 1.0


def test_a_rate_limited_create_is_not_sent_twice_by_the_client(redis_url: str) -> None:
    service = Scripted(too_many("30"))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    with pytest.raises(ApiRateLimited) as raised:
        retell.create_llm({"general_prompt": "hi"})

    assert len(service.seen) == 1
    assert (raised.value.status, raised.value.retry_after_s) == (429, 30.0)
    assert isinstance(raised.value, ApiUnavailable)  # transient: the task tries again


def test_a_retry_after_too_long_to_wait_inline_goes_back_to_the_caller(redis_url: str) -> None:
    service = Scripted(too_many("120", status=503))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    started = time.monotonic()
    with pytest.raises(ApiUnavailable) as raised:
        retell.get_agent("agent_1")

    assert len(service.seen) == 1 and time.monotonic() - started < 5
    assert raised.value.retry_after_s == 120.0


def test_a_rate_limit_without_retry_after_is_retried_with_backoff(redis_url: str) -> None:
    service = Scripted(too_many(), too_many())
    calcom = CalcomApi(settings_with(redis_url), transport=service.transport())

    calcom.get_event_type(1001)

    assert [r.url.path for _, r in service.seen] == ["/v2/event-types/1001"] * 3


def test_retells_full_state_patches_and_its_list_read_are_retried_but_creates_are_not(
    redis_url: str,
) -> None:
    twice_then_ok = [httpx.Response(503), httpx.Response(503), httpx.Response(200, json={})]
    service = Scripted(*twice_then_ok, *twice_then_ok, httpx.Response(503))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    retell.update_agent("agent_1", {"voice_id": "v"})
    retell.ping()
    with pytest.raises(ApiUnavailable):
        retell.create_agent({"agent_name": "a"})

    sent = [f"{r.method} {r.url.path}" for _, r in service.seen]
    assert sent == (
        ["PATCH /update-agent/agent_1"] * 3 + ["POST /v2/list-agents"] * 3 + ["POST /create-agent"]
    )


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422])
def test_other_4xx_are_rejections_not_retried(redis_url: str, status: int) -> None:
    service = Scripted(too_many(status=status))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    with pytest.raises(ApiRejected) as raised:
        retell.get_agent("agent_1")

    assert raised.value.status == status and len(service.seen) == 1


def test_a_413_with_retry_after_is_temporary(redis_url: str) -> None:
    service = Scripted(too_many("0", status=413))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    retell.get_agent("agent_1")

    assert len(service.seen) == 2


def test_rate_limits_count_against_the_breaker(redis_url: str) -> None:
    settings = settings_with(redis_url, breaker_fail_max=2)
    service = Scripted(*[too_many("0")] * 5)
    retell = RetellApi(settings, transport=service.transport())

    with pytest.raises(CircuitOpen):
        retell.get_agent("agent_1")

    assert len(service.seen) == 2
    assert breaker_status("retell", settings).state == "open"


def test_a_redirect_is_not_followed(redis_url: str) -> None:
    service = Scripted(httpx.Response(301, headers={"Location": "https://elsewhere.test/"}))
    retell = RetellApi(settings_with(redis_url), transport=service.transport())

    with pytest.raises(ApiRejected):
        retell.create_llm({"general_prompt": "hi"})

    assert len(service.seen) == 1


def test_every_call_carries_the_key_and_asks_for_json(redis_url: str) -> None:
    service = Scripted()
    RetellApi(settings_with(redis_url), transport=service.transport()).get_phone_number("+4930")

    [(_, request)] = service.seen
    assert request.headers["authorization"] == "Bearer key_unit"
    assert request.headers["accept"] == "application/json"
    assert request.url.raw_path == b"/get-phone-number/+4930"


# --- one pooled connection --------------------------------------------------------------


def test_many_calls_reuse_one_connection(redis_url: str, standin: StandIn) -> None:
    settings = settings_for("sqlite://", redis_url, standin)
    retell = RetellApi(settings)
    before = standin.connections

    for _ in range(25):
        retell.ping()
    RetellApi(settings).get_phone_number("+4930901820")  # a new RetellApi, the same pool

    assert len(standin.calls("POST", "/v2/list-agents")) == 25
    assert standin.connections - before == 1


def _child_gets_its_own_client(parent: httpx.Client, answer: multiprocessing.SimpleQueue) -> None:
    mine = pooled_client("retell", "https://retell.test", {}, 1.0)
    answer.put(mine is not parent)


def test_a_forked_process_builds_its_own_client() -> None:
    parent = pooled_client("retell", "https://retell.test", {}, 1.0)
    assert pooled_client("retell", "https://retell.test", {}, 1.0) is parent
    fork = multiprocessing.get_context("fork")
    answer = fork.SimpleQueue()
    child = fork.Process(target=_child_gets_its_own_client, args=(parent, answer))

    child.start()
    child.join(30)

    assert child.exitcode == 0
    assert answer.get() is True


# --- provisioning under a rate limit ------------------------------------------------------


def agent_status(sessions: sessionmaker[Session], branch_id: int) -> tuple[str, str | None]:
    with sessions() as session:
        row = session.scalar(select(Agent).where(Agent.branch_id == branch_id))
    assert row is not None
    return row.status, row.last_error


@pytest.mark.parametrize(
    ("will_retry", "status"), [(True, AgentStatus.RETRYING), (False, AgentStatus.FAILED)]
)
def test_a_rate_limited_run_is_marked_retrying_while_the_task_will_try_again(
    sessions: sessionmaker[Session],
    database_url: str,
    redis_url: str,
    standin: StandIn,
    will_retry: bool,
    status: AgentStatus,
) -> None:
    settings = settings_for(database_url, redis_url, standin)
    branch_id = seed_branch(sessions)
    standin.script("POST", "/create-retell-llm", Reply(429, headers={"Retry-After": "30"}))

    with pytest.raises(ApiRateLimited) as raised:
        provision_branch(sessions, branch_id, settings, will_retry=will_retry)

    assert raised.value.retry_after_s == 30.0
    found, error = agent_status(sessions, branch_id)
    assert found == status
    assert "429" in (error or "") and "retry after 30 s" in (error or "")
    assert standin.llms == {}

    outcome = provision_branch(sessions, branch_id, settings)  # the task's next try

    assert outcome.action == "created" and len(standin.llms) == 1
    assert agent_status(sessions, branch_id) == (AgentStatus.ACTIVE, None)


@pytest.mark.e2e
def test_the_provisioning_worker_retries_a_rate_limited_branch_after_retry_after(
    tmp_path: Path, redis_url: str, standin: StandIn, sqlite_template: Path
) -> None:
    """Retell answers 429 (Retry-After: 3) to the LLM create: the real worker's task
    leaves the row ``retrying``, comes back no sooner than asked, and finishes."""
    from tests.processes import Processes

    database = copy_sqlite(sqlite_template, tmp_path / "db")
    engine = make_engine(Settings(database_url=database))
    branch_id = seed_branch(make_sessionmaker(engine))
    engine.dispose()
    standin.script("POST", "/create-retell-llm", Reply(429, headers={"Retry-After": "3"}))
    env = env_for(database, redis_url, standin)
    processes = Processes.for_servers(tmp_path / "fleet", **env)
    processes.start("worker_provisioning")
    try:
        processes.wait_for_worker("worker_provisioning")
        done = subprocess.run(
            [HOOKFLEET, "provision", str(branch_id), "--queue", "--wait", "90"],
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        processes.stop_all()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "retrying — ApiRateLimited: retell: POST /create-retell-llm answered 429" in done.stdout
    [agent_id] = standin.agents
    assert f"active: agent {agent_id}" in done.stdout
    first, second = standin.calls("POST", "/create-retell-llm")
    assert second.at - first.at >= 3.0
    assert len(standin.llms) == 1


def test_a_rate_limited_connectivity_check_is_no_refusal(
    sessions: sessionmaker[Session], database_url: str, redis_url: str, standin: StandIn
) -> None:
    settings = settings_for(database_url, redis_url, standin)
    branch_id = seed_branch(sessions)
    standin.script("POST", "/v2/list-agents", Reply(429, headers={"Retry-After": "60"}))

    with pytest.raises(ApiRateLimited):
        provision_branch(sessions, branch_id, settings, check_connectivity=True, will_retry=True)

    with sessions() as session:
        assert session.scalar(select(Agent)) is None  # nothing recorded as refused
    assert standin.agents == {}
