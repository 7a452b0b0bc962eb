"""Which regions read a phone number written without a country code: this process's
HOOKFLEET_PHONE_REGIONS (read once per process, again in a forked child), never a
global that whoever ran last (a receiver, a worker's configuration) set."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ingest import create_app
from models.customers import Customer
from models.phones import normalize_phone
from models.settings import forget_process_settings

SWISS_MOBILE = "079 123 45 67"  # national: read as Swiss in CH, as German in DE
AS_SWISS = "+41791234567"
AS_GERMAN = "+49791234567"


@pytest.fixture
def regions(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """This process's settings read afresh, and forgotten again after the test (the
    environment it changes is put back by monkeypatch)."""
    monkeypatch.delenv("HOOKFLEET_PHONE_REGIONS", raising=False)
    forget_process_settings()
    yield monkeypatch
    forget_process_settings()


def test_a_stored_number_is_read_in_the_regions_of_this_process(
    regions: pytest.MonkeyPatch,
) -> None:
    regions.setenv("HOOKFLEET_PHONE_REGIONS", "CH,DE")
    forget_process_settings()

    customer = Customer(name="Ada", phone=SWISS_MOBILE)

    assert (customer.phone, customer.phone_valid) == (AS_SWISS, True)
    assert normalize_phone(SWISS_MOBILE).value == AS_SWISS
    assert normalize_phone(SWISS_MOBILE, ("DE",)).value == AS_GERMAN  # given wins


def test_the_regions_are_read_once_per_process_until_forgotten(
    regions: pytest.MonkeyPatch,
) -> None:
    assert normalize_phone(SWISS_MOBILE).value == AS_GERMAN  # the default: DE, AT, CH
    regions.setenv("HOOKFLEET_PHONE_REGIONS", "CH")
    assert normalize_phone(SWISS_MOBILE).value == AS_GERMAN

    forget_process_settings()

    assert normalize_phone(SWISS_MOBILE).value == AS_SWISS


def test_a_receiver_built_with_other_regions_leaves_this_process_rule_alone(
    regions: pytest.MonkeyPatch,
) -> None:
    env = {"HOOKFLEET_REDIS_URL": "redis://127.0.0.1:9/0", "HOOKFLEET_PHONE_REGIONS": "CH"}
    for name in ("RETELL", "STRIPE", "STANDARD", "CALCOM"):
        env[f"HOOKFLEET_{name}_VERIFY"] = "off"
    create_app(env)

    assert Customer(name="Ada", phone=SWISS_MOBILE).phone == AS_GERMAN


def test_a_list_of_no_regions_falls_back_to_the_default(regions: pytest.MonkeyPatch) -> None:
    regions.setenv("HOOKFLEET_PHONE_REGIONS", ",")
    forget_process_settings()

    assert normalize_phone(SWISS_MOBILE).value == AS_GERMAN


def test_a_forked_child_reads_its_own_regions(regions: pytest.MonkeyPatch) -> None:
    assert normalize_phone(SWISS_MOBILE).value == AS_GERMAN  # built in the parent
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.environ["HOOKFLEET_PHONE_REGIONS"] = "CH"
        os.write(write, normalize_phone(SWISS_MOBILE).value.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 100).decode()
    os.close(read)

    assert in_child == AS_SWISS
    assert normalize_phone(SWISS_MOBILE).value == AS_GERMAN
