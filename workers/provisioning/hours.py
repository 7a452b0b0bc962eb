"""Working hours: the one format Hookfleet stores, and what is wrong with a given value.

``Branch.working_hours`` is a JSON object from weekday to a list of ``[open, close]``
pairs in 24-hour ``HH:MM``, local to the branch's timezone::

    {"mon": [["09:00", "12:30"], ["13:30", "18:00"]], "sat": [["10:00", "14:00"]]}

Weekdays are ``mon tue wed thu fri sat sun``; a day that is missing or has an empty list
is closed. Intervals must not cross midnight (split them: ``fri`` until ``24:00`` is
not allowed, end at ``23:59``).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from workers.provisioning.findings import Finding, error

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_EXAMPLE = '{"mon": [["09:00", "18:00"]], "tue": [["09:00", "18:00"]]}'


def check_working_hours(hours: Any) -> list[Finding]:
    """Findings for ``hours`` (the JSON value as stored); empty when it is usable."""
    if not hours:
        return [
            error(
                "WORKING_HOURS_MISSING",
                "The branch has no working hours, so the agent cannot tell callers when it is open",
                f"Set the branch's working hours, e.g. {_EXAMPLE}",
            )
        ]
    if not isinstance(hours, dict):
        return [
            error(
                "WORKING_HOURS_MALFORMED",
                f"Working hours must map weekdays to time ranges, got {hours!r}",
                f"Store them as {_EXAMPLE}",
            )
        ]
    findings: list[Finding] = []
    open_days = 0
    for day, ranges in hours.items():
        if day not in WEEKDAYS:
            findings.append(
                error(
                    "WORKING_HOURS_DAY_UNKNOWN",
                    f"Working hours name a day {day!r}, which is not a weekday",
                    f"Use one of {', '.join(WEEKDAYS)} (e.g. rename {day!r} to 'mon')",
                )
            )
            continue
        intervals = _check_day(day, ranges, findings)
        open_days += bool(intervals)
        for (a_open, a_close), (b_open, b_close) in itertools.pairwise(intervals):
            if b_open < a_close:
                findings.append(
                    error(
                        "WORKING_HOURS_OVERLAP",
                        f"On {day}, {_hhmm(a_open)}-{_hhmm(a_close)} overlaps "
                        f"{_hhmm(b_open)}-{_hhmm(b_close)}",
                        f"Merge them into one range ({_hhmm(a_open)}-"
                        f"{_hhmm(max(a_close, b_close))}) or fix the times",
                    )
                )
    if open_days == 0 and not findings:
        findings.append(
            error(
                "WORKING_HOURS_MISSING",
                "The working hours open the branch on no day at all",
                f"Add at least one day with a time range, e.g. {_EXAMPLE}",
            )
        )
    return findings


def _check_day(day: str, ranges: Any, findings: list[Finding]) -> list[tuple[int, int]]:
    """Valid intervals of one day, sorted, as minutes since midnight."""
    if not isinstance(ranges, list):
        findings.append(
            error(
                "WORKING_HOURS_MALFORMED",
                f"Working hours for {day} must be a list of [open, close] pairs, got {ranges!r}",
                f'Write e.g. "{day}": [["09:00", "18:00"]]',
            )
        )
        return []
    intervals = []
    for pair in ranges:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            findings.append(
                error(
                    "WORKING_HOURS_MALFORMED",
                    f"Working hours for {day} contain {pair!r}, which is not an [open, close] pair",
                    f'Write e.g. "{day}": [["09:00", "18:00"]]',
                )
            )
            continue
        minutes = [_minutes(value) for value in pair]
        for value, parsed in zip(pair, minutes, strict=True):
            if parsed is None:
                findings.append(
                    error(
                        "WORKING_HOURS_TIME_INVALID",
                        f"On {day}, {value!r} is not a time of day",
                        "Write times as 24-hour HH:MM, e.g. '09:00' or '18:30'",
                    )
                )
        opens, closes = minutes
        if opens is None or closes is None:
            continue
        if opens >= closes:
            findings.append(
                error(
                    "WORKING_HOURS_INTERVAL_EMPTY",
                    f"On {day}, the branch opens at {pair[0]} but closes at {pair[1]}",
                    "Make the opening time earlier than the closing time "
                    "(split ranges that cross midnight at 23:59)",
                )
            )
            continue
        intervals.append((opens, closes))
    return sorted(intervals)


def _minutes(value: Any) -> int | None:
    match = _TIME.match(value) if isinstance(value, str) else None
    return None if match is None else int(match.group(1)) * 60 + int(match.group(2))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
