"""``hookfleet send``'s samples and signatures, without a fleet: the shipped fixtures are
the real-shaped bodies of tests/fixtures, each send is a new event the receiver's own
provider code accepts, and the signature verifies with the receiver's own verifier."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ingest.providers import REGISTRY
from ingest.providers.base import Delivery
from models.settings import ProviderSettings
from workers.cli.samples import (
    DEFAULT_FIXTURE,
    PROVIDERS,
    Sample,
    fixture_names,
    fresh,
    load_fixture,
)
from workers.cli.send import _serialize, _sign

TEST_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRETS = {
    "stripe": "whsec_3kTq9vPz7LmN2xR8wY4bC6dF1gH5jK0s",
    "standard": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "retell": "key_8f3a1c2e9b7d4f60a5e1c3b2d9f7e6a4",
    "calcom": "calcom_secret_for_send",
}
SHIPPED = [(p, name) for p in PROVIDERS for name in fixture_names(p)]


def _real_bodies(provider: str) -> list[object]:
    bodies = []
    for path in (TEST_FIXTURES / provider).glob("*.json"):
        value = json.loads(path.read_text())
        bodies.append(value.get("body", value) if provider == "calcom" else value)
    return bodies


def _identity(provider: str, body: bytes, headers: dict[str, str]) -> tuple[str, str]:
    delivery = Delivery(body=body, headers=headers, received_at=time.time())
    identity = REGISTRY[provider].identify(delivery, json.loads(body))
    return identity.event_id, identity.event_type


def test_every_provider_ships_its_common_events() -> None:
    assert set(PROVIDERS) == set(REGISTRY)
    for provider in PROVIDERS:
        assert DEFAULT_FIXTURE[provider] in fixture_names(provider)
    assert {"call_started", "call_ended", "call_analyzed", "call_inbound"} <= set(
        fixture_names("retell")
    )
    assert {"BOOKING_CREATED", "BOOKING_CANCELLED", "BOOKING_RESCHEDULED"} <= set(
        fixture_names("calcom")
    )
    # More than one: a billing event as in the README's curl example, and a failure.
    assert {"contact.created", "invoice.paid", "subscription.renewed", "payment.failed"} <= set(
        fixture_names("standard")
    )


@pytest.mark.parametrize(("provider", "name"), SHIPPED)
def test_a_shipped_fixture_is_a_real_shaped_body_of_tests_fixtures(
    provider: str, name: str
) -> None:
    assert load_fixture(provider, name) in _real_bodies(provider)


@pytest.mark.parametrize(("provider", "name"), SHIPPED)
def test_each_send_is_a_new_event_the_provider_accepts(provider: str, name: str) -> None:
    payload = load_fixture(provider, name)
    sends = [fresh(provider, payload)]
    time.sleep(0.002)  # a Cal.com PING has no id: its createdAt (ms) makes it new
    sends.append(fresh(provider, payload))
    again = [fresh(provider, payload, same_id=True) for _ in range(2)]

    def identity(sample: Sample) -> tuple[str, str]:
        body = _serialize(provider, sample.payload)
        settings = ProviderSettings(secrets=(SECRETS[provider],))
        headers, _ = _sign(provider, body, settings, sample.headers)
        time.sleep(0.002)  # call_inbound is told apart by its signature's millisecond
        return _identity(provider, body, headers)

    first, second = (identity(s) for s in sends)
    assert first[1] == second[1] and first[1]  # the same kind of event
    assert first[0] != second[0]  # a new one each time
    if not (provider == "retell" and name == "call_inbound"):
        assert identity(again[0]) == identity(again[1])  # --same-id: a duplicate


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_signature_verifies_with_the_receivers_verifier(provider: str) -> None:
    sample = fresh(provider, load_fixture(provider, DEFAULT_FIXTURE[provider]))
    body = _serialize(provider, sample.payload)
    settings = ProviderSettings(secrets=(SECRETS[provider],))
    headers, how = _sign(provider, body, settings, sample.headers)
    delivery = Delivery(body=body, headers=headers, received_at=time.time())

    REGISTRY[provider].verify(delivery, settings)  # raises VerificationError if not

    assert how == f"signed with the first of HOOKFLEET_{provider.upper()}_SECRETS"
    wrong = ProviderSettings(
        secrets=(
            SECRETS["standard"]
            if provider != "standard"
            else "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
        )
    )
    with pytest.raises(Exception, match="signature"):
        REGISTRY[provider].verify(delivery, wrong)


def test_without_a_secret_in_trial_mode_it_goes_unsigned_and_says_so() -> None:
    headers, how = _sign("standard", b"{}", ProviderSettings(verify=False), {"webhook-id": "m"})

    assert "webhook-signature" not in headers and headers["webhook-id"] == "m"
    assert how == "unsigned: trial mode, HOOKFLEET_STANDARD_VERIFY=off"


def test_list_names_the_fixtures_and_the_default() -> None:
    from click.testing import CliRunner

    from workers.cli.main import main

    result = CliRunner().invoke(main, ["send", "retell", "--list"])

    assert result.exit_code == 0
    assert result.output.split("\n")[:4] == [
        "call_analyzed",
        "call_ended",
        "call_inbound",
        "call_started  (default)",
    ]


def test_a_file_of_ones_own_is_sent_and_a_missing_one_named(tmp_path: Path) -> None:
    import click

    from workers.cli.send import _read_sample

    body = tmp_path / "mine.json"
    body.write_text('{"type": "order.shipped", "data": {"id": "o_1"}}')

    assert _read_sample("standard", str(body)) == ("mine.json", body.read_text())
    assert _read_sample("stripe", None) == ("payment_intent.succeeded", None)
    with pytest.raises(click.ClickException, match="no such file"):
        _read_sample("standard", str(tmp_path / "missing.json"))


def test_without_a_fleet_it_posts_to_the_port_the_receiver_binds(tmp_path: Path) -> None:
    """No `hookfleet up` recorded and no --url: the receiver the Procfile's `web` line
    starts listens on $PORT, so that is where a send goes (it posted to 8000 whatever
    PORT said)."""
    from click.testing import CliRunner

    from tests.servers import free_port
    from workers.cli.main import main

    port = free_port()  # nothing listens there: the answer is the "no answer" error
    env = {"PORT": str(port), "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["send", "stripe"], env=env)

    assert result.exit_code == 1
    assert f"POST http://127.0.0.1:{port}/webhooks/stripe" in result.output
    assert f"no answer from http://127.0.0.1:{port}/webhooks/stripe" in result.output
