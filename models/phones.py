"""Phone numbers in one form: E.164, via ``phonenumbers``.

:func:`normalize_phone` is the only way a phone number is stored: the models call it on
every write. Invalid input is kept as given and flagged, never raised, so a strange
number can never kill a task.

A number written without a country code is read in the regions of
``HOOKFLEET_PHONE_REGIONS``, in order: passed in where settings are at hand, else this
process's settings (:func:`models.settings.process_settings`, read once per process).
There is no region state of its own to set or to leak from one test to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from models.settings import DEFAULT_PHONE_REGIONS, process_settings

# The width of every phone column (customers, branches, calls, agents): E.164 is at most
# 16 characters; an invalid number kept as given is cut to fit.
PHONE_MAX = 32

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


@dataclass(frozen=True)
class Phone:
    """A normalized number. ``value`` is E.164 when valid, else the input as given."""

    value: str
    valid: bool
    type: str


def normalize_phone(raw: str, regions: tuple[str, ...] | None = None) -> Phone:
    """E.164 for ``raw``, trying ``regions`` (default: this process's
    ``HOOKFLEET_PHONE_REGIONS``; DEFAULT_PHONE_REGIONS where that lists none, e.g.
    ``,``) for national numbers. Never raises for any ``raw``; cached (bounded LRU).
    Without ``regions``, a process whose settings do not parse raises their ConfigError
    on first use (every Hookfleet process has read them before it stores a number)."""
    return _normalize(raw, regions or process_settings().phone_regions or DEFAULT_PHONE_REGIONS)


def stored_phone(raw: object) -> Phone | None:
    """How every phone column stores ``raw``: None when it is no string or blank (an
    unknown number, NULL); else :func:`normalize_phone`'s answer with ``value`` cut to
    PHONE_MAX characters. The one rule for Customer, Branch, calls and the integrity
    repair, so a repaired row equals what the model would have written."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    phone = normalize_phone(raw)
    return phone if len(phone.value) <= PHONE_MAX else replace(phone, value=phone.value[:PHONE_MAX])


@lru_cache(maxsize=65536)
def _normalize(raw: str, regions: tuple[str, ...]) -> Phone:
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    international = _international_without_plus(text, regions)
    if international is not None:
        return international
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


_SEPARATORS = str.maketrans("", "", " -./()")


def _international_without_plus(text: str, regions: tuple[str, ...]) -> Phone | None:
    """``4915153713055``: an international number written without its ``+``. Read
    nationally it would be ``+49 4915153713055`` — which phonenumbers' length-based
    check may even call valid (German area codes vary in length). A national number is
    dialled with its trunk prefix ``0`` in DE/AT/CH, so digits that do not start with
    0, are at least 10 long (a full number with country code; a local number without
    area code is shorter), start with the country code of one of ``regions`` and are
    valid with a ``+`` are taken as international (``15153713055``, a German mobile
    without its 0, is not read as a US number)."""
    digits = text.translate(_SEPARATORS)
    if not digits.isdigit() or digits.startswith("0") or len(digits) < 10:
        return None
    codes = {str(phonenumbers.country_code_for_region(region)) for region in regions}
    if not any(digits.startswith(code) for code in codes):
        return None
    try:
        number = phonenumbers.parse("+" + digits, None)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return Phone(
        value=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        valid=True,
        type=_TYPES.get(phonenumbers.number_type(number), "unknown"),
    )
