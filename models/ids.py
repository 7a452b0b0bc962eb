"""Random ids in the text forms Python's :mod:`uuid` writes, made with less work.

The receiver makes three per delivery (the Celery task id, kombu's delivery tag and,
when the sender offers none, the correlation id). ``str(uuid.uuid4())`` builds a
``UUID`` object through its general constructor (several big-integer operations) to
set six bits of 16 random bytes; here the bits are set on the bytes. Same randomness
(``os.urandom(16)``, as ``uuid.uuid4`` reads it), same version and variant bits
(RFC 9562 section 5.4), same text: ``tests/unit/test_ids.py`` compares them.
"""

from __future__ import annotations

import os


def _uuid4_hex(random16: bytes) -> str:
    raw = bytearray(random16)
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # variant 10 (RFC 4122 / 9562)
    return raw.hex()


def uuid4_hex() -> str:
    """``uuid.uuid4().hex``: 32 lower-case hex digits."""
    return _uuid4_hex(os.urandom(16))


def uuid4_text() -> str:
    """``str(uuid.uuid4())``: ``xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx``, lower case."""
    h = _uuid4_hex(os.urandom(16))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
