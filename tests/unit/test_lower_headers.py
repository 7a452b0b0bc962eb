"""The request's headers, read from the WSGI environ with their names remembered, are
the ones the former one-pass reading gave, in the same order."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ingest import request as request_module
from ingest.request import lower_headers


def _former(environ: dict[str, Any]) -> dict[str, str]:
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


keys = st.one_of(
    st.sampled_from(
        ["HTTP_WEBHOOK_ID", "HTTP_CONTENT_TYPE", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_"]
    ),
    st.text(alphabet="ABCXYZ_", max_size=8).map(lambda name: "HTTP_" + name),
    st.text(max_size=10),
)


@given(st.lists(st.dictionaries(keys, st.text(max_size=5), max_size=12), max_size=4))
def test_headers_are_those_of_the_former_reading(environs: list[dict[str, Any]]) -> None:
    for environ in environs:  # names seen by an earlier request are remembered
        ours, former = lower_headers(environ), _former(environ)
        assert list(ours.items()) == list(former.items())


def test_made_up_header_names_cannot_grow_the_remembered_names_past_the_cap() -> None:
    for n in range(request_module._HEADER_NAMES_CAP + 100):
        environ = {f"HTTP_X_MADE_UP_{n}": "1"}
        assert lower_headers(environ) == {f"x-made-up-{n}": "1"}
    assert len(request_module._HEADER_NAMES) <= request_module._HEADER_NAMES_CAP
