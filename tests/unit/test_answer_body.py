"""The receiver's JSON answer bodies (ingest.views.json_body) are the bytes
``json.dumps(body, separators=(",", ":"))`` and a newline write, for any body."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ingest.views import json_body

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(body=st.dictionaries(st.text(), _values, max_size=6))
def test_an_answer_body_is_compact_ascii_json_and_a_newline(body: dict[str, Any]) -> None:
    assert json_body(body) == (json.dumps(body, separators=(",", ":")) + "\n").encode()
