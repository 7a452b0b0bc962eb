"""The receiver's fast random ids are the text ``uuid.uuid4()`` gives for the same
random bytes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.ids import uuid4_hex, uuid4_text


def replaying(random16: bytes) -> Iterator[bytes]:
    while True:
        yield random16


@given(st.binary(min_size=16, max_size=16))
def test_ids_are_what_uuid4_writes_for_the_same_random_bytes(random16: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        # uuid.uuid4 and models.ids both read os.urandom(16): give both the same bytes.
        source = replaying(random16)
        patch.setattr(os, "urandom", lambda n: next(source)[:n])
        assert uuid4_text() == str(uuid.uuid4())
        assert uuid4_hex() == uuid.uuid4().hex


def test_ids_are_random_version_4() -> None:
    ids = {uuid4_text() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(text).version == 4 for text in ids)
