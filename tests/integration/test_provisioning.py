"""Provisioning against a real stand-in Retell server, on SQLite and MariaDB: one agent
per branch whatever happens — reruns, 5xx, and an answer lost after Retell acted."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.business import Agent, Branch, Service
from models.settings import Settings
from tests.provisioning_helpers import BRANCH_PHONE, seed_branch, settings_for
from tests.servers import wait_until
from tests.standin import Reply, StandIn
from workers.outbound.errors import ApiRejected, ApiUnavailable
from workers.provisioning.provisioner import AgentStatus, provision_branch


@pytest.fixture
def settings(database_url: str, redis_url: str, standin: StandIn) -> Settings:
    return settings_for(database_url, redis_url, standin)


def agent_row(sessions: sessionmaker[Session], branch_id: int) -> Agent:
    with sessions() as session:
        row = session.scalar(select(Agent).where(Agent.branch_id == branch_id))
    assert row is not None
    return row


def writes(standin: StandIn) -> list[str]:
    return [f"{r.method} {r.path}" for r in standin.requests if r.method != "GET"]


def test_a_valid_branch_gets_one_agent_bound_to_its_number(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)

    outcome = provision_branch(sessions, branch_id, settings)

    assert outcome.action == "created"
    [(agent_id, agent)] = standin.agents.items()
    assert outcome.agent_id == agent_id
    assert agent["agent_name"] == f"hookfleet-branch-{branch_id}"
    assert agent["language"] == "de-DE"
    assert agent["webhook_url"] == "https://hooks.example/webhooks/retell"
    [llm_id] = standin.llms
    assert agent["response_engine"] == {"type": "retell-llm", "llm_id": llm_id}
    prompt = standin.llms[llm_id]["general_prompt"]
    assert "Salon Ada" in prompt and "Haircut (30 Min.)" in prompt and "09:00-13:00" in prompt
    assert standin.phone_numbers[BRANCH_PHONE]["inbound_agent_id"] == agent_id
    row = agent_row(sessions, branch_id)
    assert (row.status, row.retell_agent_id, row.retell_llm_id) == ("active", agent_id, llm_id)
    assert row.phone_number == BRANCH_PHONE and row.last_error is None
    with sessions() as session:
        assert session.get_one(Branch, branch_id).retell_agent_id == agent_id
    assert all(r.headers["authorization"] == "Bearer key_standin" for r in standin.requests)


def test_running_twice_creates_one_agent_and_the_second_run_sends_nothing(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)
    provision_branch(sessions, branch_id, settings)
    before = len(standin.requests)

    again = provision_branch(sessions, branch_id, settings)

    assert again.action == "unchanged"
    assert len(standin.agents) == 1 and len(standin.llms) == 1
    assert standin.requests[before:] == []


def test_a_changed_branch_updates_the_same_agent(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)
    first = provision_branch(sessions, branch_id, settings)
    with sessions() as session, session.begin():
        company_id = session.get_one(Branch, branch_id).company_id
        session.add(Service(company_id=company_id, name="Beard trim", duration_minutes=15))
    before = len(standin.requests)

    second = provision_branch(sessions, branch_id, settings)

    assert (second.action, second.agent_id) == ("updated", first.agent_id)
    assert len(standin.agents) == 1 and len(standin.llms) == 1
    assert "Beard trim (15 Min.)" in next(iter(standin.llms.values()))["general_prompt"]
    assert [f"{r.method} {r.path}" for r in standin.requests[before:]] == [
        f"PATCH /update-retell-llm/{next(iter(standin.llms))}",
        f"PATCH /update-agent/{first.agent_id}",
        f"PATCH /update-phone-number/{BRANCH_PHONE}",
    ]


def test_a_5xx_then_success_still_makes_one_agent(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)
    standin.script("POST", "/create-agent", Reply(503, {"message": "busy"}))
    standin.script("PATCH", "/update-phone-number", Reply(502), Reply(None, delay_s=1.5))

    outcome = provision_branch(sessions, branch_id, settings)

    assert outcome.action == "created"
    assert len(standin.agents) == 1
    assert len(standin.calls("POST", "/create-agent")) == 2
    # 502, then a timeout, then the answer: the idempotent PATCH is simply retried.
    assert len(standin.calls("PATCH", "/update-phone-number")) == 3
    assert agent_row(sessions, branch_id).status == AgentStatus.ACTIVE


def test_an_answer_lost_after_retell_created_the_agent_never_makes_a_second(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    """The crash window: Retell creates the agent, we never hear (timeout), and the run
    dies before storing its id. The rerun finds the agent by its name."""
    branch_id = seed_branch(sessions)
    # The first list (before creating) works; the create's answer arrives after our 1 s
    # timeout; every lookup after that fails, so the run gives up without the id.
    standin.script("POST", "/create-agent", Reply(None, delay_s=1.5))
    standin.script("POST", "/v2/list-agents", Reply(None), *[Reply(503)] * 6)

    with pytest.raises(ApiUnavailable):
        provision_branch(sessions, branch_id, settings)

    wait_until(lambda: len(standin.agents) == 1, 5, "Retell to have created the agent")
    row = agent_row(sessions, branch_id)
    assert (row.status, row.retell_agent_id) == (AgentStatus.FAILED, None)
    assert "ApiUnavailable" in (row.last_error or "")

    outcome = provision_branch(sessions, branch_id, settings)

    [agent_id] = standin.agents
    assert (outcome.action, outcome.agent_id) == ("adopted", agent_id)
    assert len(standin.calls("POST", "/create-agent")) == 1
    assert len(standin.llms) == 1  # the LLM id was stored before the agent was created
    assert agent_row(sessions, branch_id).retell_agent_id == agent_id
    assert standin.phone_numbers[BRANCH_PHONE]["inbound_agent_id"] == agent_id


def test_a_timed_out_create_is_found_in_the_same_run(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)
    standin.script("POST", "/create-agent", Reply(None, delay_s=1.5))

    outcome = provision_branch(sessions, branch_id, settings)

    assert outcome.action == "adopted"
    assert len(standin.agents) == 1
    assert len(standin.calls("POST", "/create-agent")) == 1


def test_a_branch_with_errors_is_refused_and_nothing_is_sent(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions, phone="030 12", working_hours=None)

    outcome = provision_branch(sessions, branch_id, settings)

    assert outcome.action == "refused"
    assert {f.code for f in outcome.findings} == {"BRANCH_PHONE_INVALID", "WORKING_HOURS_MISSING"}
    assert standin.requests == []
    row = agent_row(sessions, branch_id)
    assert row.status == AgentStatus.INVALID
    assert row.last_error == "provisioning refused: BRANCH_PHONE_INVALID, WORKING_HOURS_MISSING"


def test_a_dry_run_sends_nothing_and_shows_the_plan(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)

    outcome = provision_branch(sessions, branch_id, settings, dry_run=True)

    assert outcome.action == "dry-run" and outcome.findings == []
    assert outcome.config["agent"]["agent_name"] == f"hookfleet-branch-{branch_id}"
    assert "POST /create-agent" in outcome.steps
    assert standin.requests == []
    with sessions() as session:
        assert session.scalar(select(Agent)) is None


def test_connectivity_checks_ask_retell_and_calcom(
    sessions: sessionmaker[Session], settings: Settings, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions, calcom_event_type_id=4242)
    del standin.phone_numbers[BRANCH_PHONE]

    outcome = provision_branch(sessions, branch_id, settings, check_connectivity=True)

    assert outcome.action == "refused"
    assert {f.code for f in outcome.findings} == {
        "RETELL_PHONE_NOT_FOUND",
        "CALCOM_EVENT_TYPE_NOT_FOUND",
    }
    calcom = standin.calls("GET", "/v2/event-types/4242")[0]
    assert calcom.headers["authorization"] == "Bearer cal_live_standin"
    assert calcom.headers["cal-api-version"] == "2024-06-14"
    assert standin.agents == {}


def test_a_rejected_key_is_an_error_and_is_not_retried(
    sessions: sessionmaker[Session], database_url: str, redis_url: str, standin: StandIn
) -> None:
    branch_id = seed_branch(sessions)
    wrong = settings_for(database_url, redis_url, standin, retell_api_key="key_wrong")

    with pytest.raises(ApiRejected):
        provision_branch(sessions, branch_id, wrong)

    assert len(standin.calls("POST", "/v2/list-agents")) == 1
    assert "401" in (agent_row(sessions, branch_id).last_error or "")
