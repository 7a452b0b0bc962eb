"""Phone numbers in one form: E.164, via ``phonenumbers``.

:func:`normalize_phone` is the only way a phone number is stored: the models call it on
every write. Invalid input is kept as given and flagged, never raised, so a strange
number can never kill a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

DEFAULT_REGIONS: tuple[str, ...] = ("DE", "AT", "CH")

_TYPES = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}

_regions: tuple[str, ...] = DEFAULT_REGIONS


def configure_regions(regions: tuple[str, ...]) -> None:
    """Set the regions tried, in order, for numbers without a country code."""
    global _regions
    _regions = tuple(r.upper() for r in regions) or DEFAULT_REGIONS


@dataclass(frozen=True)
class Phone:
    """A normalized number. ``value`` is E.164 when valid, else the input as given."""

    value: str
    valid: bool
    type: str


def normalize_phone(raw: str, regions: tuple[str, ...] | None = None) -> Phone:
    """E.164 for ``raw``, trying ``regions`` (default: the configured list) for national
    numbers. Never raises; cached (bounded LRU)."""
    return _normalize(raw, regions or _regions)


@lru_cache(maxsize=65536)
def _normalize(raw: str, regions: tuple[str, ...]) -> Phone:
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    for region in (None,) if text.startswith("+") else regions:
        try:
            number = phonenumbers.parse(text, region)
        except NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return Phone(
                value=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
                valid=True,
                type=_TYPES.get(phonenumbers.number_type(number), "unknown"),
            )
    return Phone(value=raw.strip(), valid=False, type="unknown")
