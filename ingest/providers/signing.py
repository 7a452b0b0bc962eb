"""The two checks every signed provider makes, written once.

- :func:`check_tolerance`: the signed timestamp is within the replay window.
- :func:`matches_any`: one offered signature equals one expected signature, compared
  in constant time (``hmac.compare_digest``), every pair, with no early exit: how long
  the check takes says nothing about which secret or which offered signature matched.
  (The standard-webhooks reference verifier, ``libraries/python/standardwebhooks/
  webhooks.py`` ``Webhook.verify``, compares in constant time but returns at the first
  match; the offered list is the sender's, so its order is known to an attacker.)
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Sequence

from ingest.errors import ErrorCode
from ingest.providers.base import VerificationError


def check_tolerance(
    sent_at: int, tolerance_s: int, *, header: str, per_second: int = 1, now: float | None = None
) -> None:
    """Raise ``VerificationError(timestamp_out_of_tolerance)`` when ``sent_at`` is more
    than ``tolerance_s`` seconds from ``now`` (default: the clock), either way.

    ``sent_at`` is in units of ``1 / per_second`` seconds (1: unix seconds, 1000: unix
    milliseconds); the comparison is made in those units, in integers, with ``now``
    truncated to them. ``header`` names where the timestamp came from, for the message.
    """
    now_units = int((time.time() if now is None else now) * per_second)
    if abs(now_units - sent_at) > tolerance_s * per_second:
        raise VerificationError(
            ErrorCode.TIMESTAMP_OUT_OF_TOLERANCE,
            f"the {header} timestamp is more than {tolerance_s} s away from our clock",
        )


def matches_any(expected: Iterable[bytes], offered: Sequence[bytes]) -> bool:
    """True when any of ``expected`` equals any of ``offered``.

    Every expected signature is compared with every offered one by
    ``hmac.compare_digest`` (constant time for equal lengths), and the loop never
    stops at a match. Bytes, so a non-ASCII offered value compares (and fails) instead
    of raising.
    """
    matched = False
    for signature in expected:
        for candidate in offered:
            matched |= hmac.compare_digest(signature, candidate)
    return matched
