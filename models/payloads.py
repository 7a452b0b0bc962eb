"""What counts as a valid webhook body, one rule for the receiver and the workers.

The receiver accepts a body only if ``parse_payload`` accepts it, and it queues the text
``parse_payload`` hands back; the workers decode that text with the same function. So
nothing the receiver answered 202 can fail to decode or to store in the worker.

The rule (JSON is RFC 8259; the database is MariaDB utf8mb4 or SQLite):

- UTF-8 text of JSON. Invalid UTF-8 bytes are refused (no real sender produces them:
  Node's and Python's encoders write well-formed UTF-8). A leading byte order mark is
  dropped (RFC 8259 section 8.1 lets a parser ignore it; some .NET senders write one).
- Lone surrogate escapes (``"\\ud83d"``: valid JSON syntax, not Unicode; a truncated
  emoji in a Node.js sender's transcript) are **accepted and stored as U+FFFD**, the
  replacement character: in the stored text the escape becomes ``\\ufffd``; nothing else
  of the text changes. Refusing would lose the event (a provider retries the same bytes
  three times, then gives up), and neither PyMySQL nor SQLite can store a lone surrogate.
  Signatures are checked over the raw bytes before this.
- ``NaN``, ``Infinity``, ``-Infinity`` (not JSON) and numbers outside a double's range
  (``1e400``) are refused: JavaScript's ``JSON.stringify`` never writes them, and they
  would not round-trip. Integers of up to 4300 digits (CPython's limit) are kept exact.
- Nesting deeper than ``MAX_DEPTH`` (64) containers is refused: real events nest about
  ten deep, and a deeper document could pass the receiver's parser yet exhaust the
  worker's (deeper) stack.

Sizes are a receiver matter (``Settings.body_limit``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64

# Scanned left to right: an escaped backslash is consumed whole (so ``\\\\ud83d`` is
# text, not an escape), a high+low surrogate pair is kept, anything else in the
# surrogate range is a lone surrogate.
_SURROGATE_ESCAPES = re.compile(
    r"(\\\\)"
    r"|(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# A float literal with a three-digit exponent may overflow a double; only then is each
# float checked one by one (the common path stays in the C scanner).
_BIG_EXPONENT = re.compile(r"[eE][+-]?[0-9]{3}")


class PayloadError(ValueError):
    """The body breaks the rule; ``reason`` says how (for a 400's message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_payload(body: bytes | str) -> tuple[Any, str]:
    """``(value, text)``: the JSON value of ``body`` and the text to store for it.

    ``text`` is ``body`` decoded, with lone surrogate escapes replaced by ``\\ufffd``
    and a leading byte order mark dropped (the only changes). Raises PayloadError for
    anything the rule refuses.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("The body is not valid UTF-8.") from None
    else:
        text = body
    text = text.removeprefix("\ufeff")
    if _MAYBE_SURROGATE.search(text):
        text = _SURROGATE_ESCAPES.sub(_keep_pairs, text)
    decoder = _CHECKED_FLOATS if _BIG_EXPONENT.search(text) else _DECODER
    try:
        if text.startswith("\ufeff"):  # a second one: refused as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = decoder.decode(text)
    except PayloadError:
        raise
    except RecursionError:
        raise PayloadError(f"The body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError as error:
        raise PayloadError(f"The body is not valid JSON: {error}.") from None
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH):
        raise PayloadError(f"The body nests deeper than {MAX_DEPTH} levels.")
    return value, text


def loads(text: str) -> Any:
    """The value of stored text (what a worker decodes); the same rule as the receiver."""
    return parse_payload(text)[0]


def _keep_pairs(match: re.Match[str]) -> str:
    if match.group(1) or match.group(2):
        return match.group(0)
    return "\\ufffd"


def _refuse_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not a JSON number (RFC 8259).")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise PayloadError(f"The number {literal[:40]} is outside the range of a double.")
    return value


# The decoders json.loads would make for these arguments, made once: json.loads builds
# a new one (and its scanner) on every call that passes a hook.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_CHECKED_FLOATS = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` (a parsed JSON value: plain dicts and lists) holds containers
    nested more than ``limit`` deep. Level by level, without recursion: a level's
    containers are collected in one pass (a Retell transcript holds a thousand small
    objects, and a stack of (node, depth) pairs cost twice as much)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return False
