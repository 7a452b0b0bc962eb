"""The receiver's error codes are declared once (``ErrorCode``): the README's answers
table, the metrics outcome, the Retry-After header and gunicorn's own refusals all
agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.errors import OUTCOME_BY_CODE, ApiError, ErrorCode
from ingest.gunicorn_worker import _ANSWERS_BY_NAME
from ingest.metrics import OUTCOMES

ROOT = Path(__file__).resolve().parents[2]


def readme_answers() -> dict[str, tuple[int, bool]]:
    """Each error code in the README's *Answers* table: (status, carries Retry-After)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Answers") :]
    section = section[: section.index("\n### ", 1)]
    found: dict[str, tuple[int, bool]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.match(r"^\d{3}\b", cells[0]):
            continue
        status = int(cells[0][:3])
        if status < 400:
            continue
        for code in re.findall(r"`([a-z_]+)`", cells[1]):
            assert code not in found, f"{code} is in the table twice"
            found[code] = (status, "Retry-After" in cells[0])
    return found


def test_the_readme_answers_table_lists_every_code_with_its_status_and_retry_after() -> None:
    declared = {code.value: (code.status, code.retry_after) for code in ErrorCode}

    assert readme_answers() == declared


def test_gunicorns_own_refusals_use_declared_codes_and_statuses() -> None:
    for name, code in _ANSWERS_BY_NAME:
        assert isinstance(code, ErrorCode), name


def test_every_outcome_a_code_is_counted_under_is_a_metrics_outcome() -> None:
    """A code whose outcome the metrics do not know would make its answer a 500
    (``count_answer`` looks the outcome's counter up)."""
    assert {code.outcome for code in ErrorCode} <= set(OUTCOMES)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (ErrorCode.MISSING_SIGNATURE, "invalid_signature"),
        (ErrorCode.TIMESTAMP_OUT_OF_TOLERANCE, "expired"),
        (ErrorCode.BODY_TOO_LARGE, "too_large"),
        (ErrorCode.QUEUE_FULL, "shed"),
        (ErrorCode.NOT_REPLICATED, "not_replicated"),
        (ErrorCode.UNKNOWN_SHAPE, "bad_request"),
        (ErrorCode.QUEUE_UNAVAILABLE, "error"),
        (ErrorCode.PROVIDER_NOT_CONFIGURED, "error"),
    ],
)
def test_each_code_is_counted_under_its_outcome(code: ErrorCode, outcome: str) -> None:
    assert OUTCOME_BY_CODE[code.value] == outcome


def test_retry_after_goes_with_exactly_the_codes_that_declare_it() -> None:
    full = ApiError(ErrorCode.QUEUE_FULL, retry_after_s=5)

    assert full.headers == {"Retry-After": "5"} and full.status == 503
    assert ApiError(ErrorCode.PROVIDER_NOT_CONFIGURED).headers == {}
    with pytest.raises(ValueError, match="needs Retry-After"):
        ApiError(ErrorCode.QUEUE_UNAVAILABLE)
    with pytest.raises(ValueError, match="has no Retry-After"):
        ApiError(ErrorCode.PROVIDER_NOT_CONFIGURED, retry_after_s=5)
