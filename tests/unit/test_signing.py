"""The checks every provider shares (``ingest/providers/signing.py``): the replay window,
and a signature comparison that looks at every pair, whatever matched first."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Iterator

import pytest

from ingest.providers import calcom, retell, signing, standard, stripe
from ingest.providers.base import Delivery, VerificationError
from ingest.providers.signing import check_tolerance, matches_any

NOW = 1_764_400_000.0
BODY = b'{"id": "evt_1", "type": "invoice.paid"}'
STANDARD_SECRETS = tuple("whsec_" + base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Every constant-time comparison the providers make, with its result."""
    seen: list[bool] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        seen.append(real(a, b))
        return seen[-1]

    monkeypatch.setattr(signing.hmac, "compare_digest", counted)
    yield seen


def test_every_expected_signature_is_compared_with_every_offered_one(
    comparisons: list[bool],
) -> None:
    assert matches_any([b"right", b"other"], [b"right", b"wrong", b"also wrong"])
    assert comparisons == [True, False, False, False, False, False]
    assert not matches_any([b"a"], [b"b", "ü".encode()])


def standard_delivery(signatures: list[str]) -> Delivery:
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": " ".join(signatures),
    }
    return Delivery(body=BODY, headers=headers, received_at=NOW)


def stripe_delivery(signatures: list[str]) -> Delivery:
    value = f"t={int(NOW)}," + ",".join(s.split(",")[1] for s in signatures)
    return Delivery(body=BODY, headers={"stripe-signature": value}, received_at=NOW)


Verify = Callable[[Delivery], None]
CASES: dict[str, tuple[Callable[[str], str], Callable[[list[str]], Delivery], Verify]] = {
    # The first offered signature matches the first secret: the rest are compared anyway.
    "standard": (
        lambda secret: standard.sign(secret, BODY, int(NOW), webhook_id="msg_1"),
        standard_delivery,
        lambda d: standard.verify_standard_signature(d, STANDARD_SECRETS, 300, now=NOW),
    ),
    "stripe": (
        lambda secret: stripe.sign(secret, BODY, int(NOW)),
        stripe_delivery,
        lambda d: stripe.verify_stripe_signature(d, STANDARD_SECRETS, 300, now=NOW),
    ),
}


@pytest.mark.parametrize("provider", list(CASES))
def test_a_rotating_sender_is_checked_against_every_secret_and_signature(
    provider: str, comparisons: list[bool]
) -> None:
    sign, delivery, verify = CASES[provider]
    right = sign(STANDARD_SECRETS[0])
    old = sign("whsec_" + base64.b64encode(b"retired secret, 24+ bytes").decode())

    verify(delivery([right, old, old]))

    # 2 secrets x 3 offered signatures, no early exit after the first pair matched.
    assert comparisons == [True, False, False, False, False, False]


def test_retell_and_calcom_compare_their_one_signature_with_every_key(
    comparisons: list[bool],
) -> None:
    now_ms = int(NOW * 1000)
    signed = Delivery(
        body=BODY,
        headers={"x-retell-signature": retell.sign("key_1", BODY, now_ms)},
        received_at=NOW,
    )
    retell.verify_retell_signature(signed, ("key_1", "key_2", "key_3"), 300, now=NOW)
    cal = Delivery(
        body=BODY, headers={"x-cal-signature-256": calcom.sign("cal_1", BODY)}, received_at=NOW
    )
    calcom.verify_calcom_signature(cal, ("cal_1", "cal_2"))

    assert comparisons == [True, False, False, True, False]


@pytest.mark.parametrize(("per_second", "edge"), [(1, 300), (1000, 300_000)], ids=["s", "ms"])
def test_the_replay_window_includes_its_edges_either_way(per_second: int, edge: int) -> None:
    now_units = int(NOW * per_second)
    for sent_at in (now_units - edge, now_units + edge):
        check_tolerance(sent_at, 300, header="h", per_second=per_second, now=NOW)
    for sent_at in (now_units - edge - 1, now_units + edge + 1):
        with pytest.raises(VerificationError) as refused:
            check_tolerance(sent_at, 300, header="x-test", per_second=per_second, now=NOW)
        assert refused.value.code == "timestamp_out_of_tolerance"
        assert "x-test timestamp is more than 300 s away" in refused.value.message
