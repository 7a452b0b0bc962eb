"""The validator on a table of broken branches: each says exactly what is wrong."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from models.settings import OutboundSettings, Settings
from workers.provisioning.findings import findings_table
from workers.provisioning.validator import BranchFacts, ServiceFacts, validate

SETTINGS = Settings(
    outbound=OutboundSettings(
        retell_api_key="key_x",
        calcom_api_key="cal_x",
        retell_webhook_url="https://hooks.example/webhooks/retell",
    )
)
GOOD = BranchFacts(
    branch_id=7,
    company_id=3,
    company_name="Salon Ada",
    industry="hair_salon",
    branch_name="Mitte",
    phone="+4930901820",
    timezone="Europe/Berlin",
    working_hours={"mon": [["09:00", "13:00"], ["14:00", "18:00"]], "sat": [["10:00", "14:00"]]},
    is_active=True,
    calcom_event_type_id=1001,
    services=(
        ServiceFacts(1, "Haircut", 30),
        ServiceFacts(2, "Colouring", 90),
        ServiceFacts(3, "Blow-dry", 30),
    ),
)


def codes(facts: BranchFacts, settings: Settings = SETTINGS) -> list[tuple[str, str]]:
    return sorted((f.severity, f.code) for f in validate(facts, settings))


def test_a_fully_configured_branch_has_no_findings() -> None:
    assert validate(GOOD, SETTINGS) == []


BROKEN: list[tuple[str, dict[str, Any], list[tuple[str, str]], str]] = [
    ("no company name", {"company_name": " "}, [("error", "COMPANY_NAME_MISSING")], "Company 3"),
    ("no branch name", {"branch_name": ""}, [("error", "BRANCH_NAME_MISSING")], "Branch 7"),
    ("inactive", {"is_active": False}, [("error", "BRANCH_INACTIVE")], "'Mitte'"),
    ("no phone", {"phone": None}, [("error", "BRANCH_PHONE_MISSING")], "'Mitte'"),
    ("short phone", {"phone": "030 12"}, [("error", "BRANCH_PHONE_INVALID")], "'030 12'"),
    ("letters", {"phone": "call us"}, [("error", "BRANCH_PHONE_INVALID")], "'call us'"),
    (
        "timezone",
        {"timezone": "Europe/Mitte"},
        [("error", "BRANCH_TIMEZONE_UNKNOWN")],
        "'Europe/Mitte'",
    ),
    ("no hours", {"working_hours": None}, [("error", "WORKING_HOURS_MISSING")], "no working"),
    ("all closed", {"working_hours": {"mon": []}}, [("error", "WORKING_HOURS_MISSING")], "no day"),
    ("hours list", {"working_hours": ["9-18"]}, [("error", "WORKING_HOURS_MALFORMED")], "9-18"),
    (
        "weekday",
        {"working_hours": {"monday": [["09:00", "18:00"]]}},
        [("error", "WORKING_HOURS_DAY_UNKNOWN")],
        "'monday'",
    ),
    (
        "time",
        {"working_hours": {"mon": [["9 Uhr", "18:00"]]}},
        [("error", "WORKING_HOURS_TIME_INVALID")],
        "'9 Uhr'",
    ),
    (
        "close before open",
        {"working_hours": {"tue": [["18:00", "09:00"]]}},
        [("error", "WORKING_HOURS_INTERVAL_EMPTY")],
        "opens at 18:00 but closes at 09:00",
    ),
    (
        "overlap",
        {"working_hours": {"wed": [["13:00", "18:00"], ["09:00", "14:00"]]}},
        [("error", "WORKING_HOURS_OVERLAP")],
        "09:00-14:00 overlaps 13:00-18:00",
    ),
    (
        "not a pair",
        {"working_hours": {"thu": [["09:00"]]}},
        [("error", "WORKING_HOURS_MALFORMED")],
        "['09:00']",
    ),
    (
        "no services",
        {"services": ()},
        [
            ("error", "SERVICES_NONE_ACTIVE"),
            ("warning", "INDUSTRY_SERVICE_MISSING"),
            ("warning", "INDUSTRY_SERVICE_MISSING"),
            ("warning", "INDUSTRY_SERVICE_MISSING"),
        ],
        "no active service",
    ),
    (
        "no duration",
        {"services": (*GOOD.services, ServiceFacts(9, "Perm", None))},
        [("error", "SERVICE_DURATION_MISSING")],
        "'Perm' (id 9)",
    ),
    (
        "zero duration",
        {"services": (*GOOD.services, ServiceFacts(9, "Fringe", 0))},
        [("error", "SERVICE_DURATION_MISSING")],
        "got 0",
    ),
    ("no event type", {"calcom_event_type_id": None}, [("error", "CALCOM_EVENT_TYPE_MISSING")], ""),
    (
        "no colouring",
        {"services": (ServiceFacts(1, "Haircut", 30), ServiceFacts(3, "Blow-dry", 30))},
        [("warning", "INDUSTRY_SERVICE_MISSING")],
        "'hair colouring'",
    ),
    ("no industry", {"industry": None}, [("warning", "COMPANY_INDUSTRY_MISSING")], "Salon Ada"),
    ("odd industry", {"industry": "zoo"}, [("warning", "COMPANY_INDUSTRY_UNKNOWN")], "'zoo'"),
]


@pytest.mark.parametrize(
    ("changes", "expected", "mentions"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_a_broken_branch_gets_exactly_its_findings(
    changes: dict[str, Any], expected: list[tuple[str, str]], mentions: str
) -> None:
    findings = validate(replace(GOOD, **changes), SETTINGS)

    assert sorted((f.severity, f.code) for f in findings) == sorted(expected)
    assert mentions in findings[0].message + " ".join(f.message for f in findings)
    for finding in findings:
        assert finding.action and finding.action[0].isupper(), finding


def test_the_phone_message_names_the_value_and_the_action_shows_the_form() -> None:
    [finding] = validate(replace(GOOD, phone="030 12"), SETTINGS)

    assert finding.message == "Branch phone '030 12' is not a valid number in DE, AT, CH"
    assert finding.action == "Enter the full number with area code, e.g. +49 30 1234567"


def test_missing_keys_and_webhook_url_are_reported() -> None:
    assert codes(GOOD, Settings()) == [
        ("error", "CALCOM_API_KEY_MISSING"),
        ("error", "RETELL_API_KEY_MISSING"),
        ("warning", "RETELL_WEBHOOK_URL_MISSING"),
    ]


def test_industries_are_a_table_each_with_recommendations() -> None:
    for industry in ("medical_practice", "physiotherapy", "legal", "restaurant"):
        found = codes(replace(GOOD, industry=industry.replace("_", " ")))
        assert found and {code for _, code in found} == {"INDUSTRY_SERVICE_MISSING"}, industry
    assert codes(replace(GOOD, industry="Hair-Salon")) == []


def test_the_findings_table_lists_errors_first_with_their_actions() -> None:
    table = findings_table(validate(replace(GOOD, phone="030 12", industry=None), SETTINGS))

    lines = table.splitlines()
    assert lines[2].startswith("error    BRANCH_PHONE_INVALID")
    assert "→ Enter the full number with area code" in table
    assert lines[-1] == "1 error(s), 1 warning(s)"
