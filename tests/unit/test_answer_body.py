"""The receiver's JSON answer bodies (ingest.views.json_body) are the bytes
``json.dumps(body, separators=(",", ":"))`` and a newline write, for any body; the
answer to a claimed delivery (ingest.views.claimed_body, joined directly) is that
body's bytes for any event id, correlation id and prior claim."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ingest.dedup import Admission
from ingest.views import claimed_body, json_body

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(body=st.dictionaries(st.text(), _values, max_size=6))
def test_an_answer_body_is_compact_ascii_json_and_a_newline(body: dict[str, Any]) -> None:
    assert json_body(body) == (json.dumps(body, separators=(",", ":")) + "\n").encode()


@given(
    event_id=st.text(),
    correlation_id=st.text(),
    accepted=st.booleans(),
    prior=st.none() | st.text(),
)
def test_a_claimed_delivery_is_answered_with_the_json_of_its_status_and_ids(
    event_id: str, correlation_id: str, accepted: bool, prior: str | None
) -> None:
    admission = Admission(accepted=accepted, prior_claim=None if accepted else prior)
    body: dict[str, Any] = {
        "status": "accepted" if accepted else "duplicate",
        "event_id": event_id,
        "correlation_id": correlation_id,
    }
    if not accepted:
        body["original_correlation_id"] = prior
    assert claimed_body(event_id, correlation_id, admission) == json_body(body)
