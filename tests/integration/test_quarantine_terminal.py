"""What the quarantine commands print and refuse: a sender's bytes cannot drive the
terminal, every entry lists in arrival order across providers, and a release given an
id that names nothing says so. A real Redis, the commands in-process."""

from __future__ import annotations

import json
import time

import redis
from click.testing import CliRunner

from ingest.providers.base import Delivery
from ingest.quarantine import Quarantine
from models.settings import Settings
from workers.cli.main import main

# What a hostile body or header carries: OSC (set the title), CSI (clear the screen),
# the one-character C1 CSI, a carriage return that rewrites the line, DEL and BEL.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\rfake line\x7f"


def store(redis_url: str) -> Quarantine:
    return Quarantine(redis.Redis.from_url(redis_url), Settings(redis_url=redis_url))


def keep(redis_url: str, provider: str, body: str, headers: dict[str, str], arrived: float) -> str:
    kept = store(redis_url).keep(
        provider, Delivery(body.encode(), headers, arrived), "invalid_signature", "corr"
    )
    assert kept.entry_id is not None
    return f"{provider}:{kept.entry_id}"


def test_show_escapes_the_control_characters_a_sender_sent(redis_url: str) -> None:
    entry_id = keep(
        redis_url, "standard", '{"a":1}\n\t' + HOSTILE, {"x-note": HOSTILE}, time.time()
    )
    env = {"HOOKFLEET_REDIS_URL": redis_url}

    shown = CliRunner().invoke(main, ["quarantine", "show", entry_id], env=env)
    as_json = CliRunner().invoke(main, ["quarantine", "show", "--json", entry_id], env=env)

    assert shown.exit_code == 0, shown.output
    for control in "\x1b\x07\x9b\r\x7f":
        assert control not in shown.output
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0dfake line\\x7f" in shown.output
    assert "x-note: \\x1b]0;pwned" in shown.output
    # The body's own newline and tab stay readable.
    assert '{"a":1}\n\t\\x1b' in shown.output
    document = json.loads(as_json.output)
    assert document["body"] == '{"a":1}\n\t' + HOSTILE
    assert document["headers"] == {"x-note": HOSTILE}
    assert document["id"] == entry_id


def test_list_shows_entries_in_arrival_order_across_providers(redis_url: str) -> None:
    # Kept in turn by provider, arriving interleaved.
    retell = [keep(redis_url, "retell", "{}", {}, time.time()) for _ in range(2)]
    time.sleep(0.01)
    stripe = keep(redis_url, "stripe", "{}", {}, time.time())
    time.sleep(0.01)
    last_retell = keep(redis_url, "retell", "{}", {}, time.time())
    env = {"HOOKFLEET_REDIS_URL": redis_url}

    listed = CliRunner().invoke(main, ["quarantine", "list", "--json"], env=env)

    order = [json.loads(line)["id"] for line in listed.output.splitlines()]
    assert order == [*retell, stripe, last_retell]


def test_a_release_naming_an_unknown_id_says_which_and_releases_nothing(redis_url: str) -> None:
    known = keep(redis_url, "standard", "{}", {}, time.time())
    env = {"HOOKFLEET_REDIS_URL": redis_url}

    done = CliRunner().invoke(
        main,
        ["quarantine", "release", "--id", known, "--id", "bogus", "--id", "stripe:1-0"],
        env=env,
    )

    assert done.exit_code == 1
    assert "bogus" in done.output and "stripe:1-0" in done.output
    assert known not in done.output
    assert [e.id for e in store(redis_url).entries("standard")] == [known]


# Characters that print nothing yet rearrange or break what the terminal shows: bidi
# overrides and isolates (U+202E turns "exe.txt" around), line and paragraph separators,
# zero-width and byte-order marks, a tag character, a soft hyphen.
INVISIBLE = "\u202eexe.txt\u202c\u2066x\u2069\u2028line\u2029para\u200b\u200d\ufeff\U000e0041\u00ad"


def test_show_escapes_bidi_overrides_and_separators_and_json_stays_exact(
    redis_url: str,
) -> None:
    body = '{"name":"' + INVISIBLE + ' ü 中"}'
    entry_id = keep(redis_url, "standard", body, {"x-note": INVISIBLE}, time.time())
    env = {"HOOKFLEET_REDIS_URL": redis_url}

    shown = CliRunner().invoke(main, ["quarantine", "show", entry_id], env=env)
    as_json = CliRunner().invoke(main, ["quarantine", "show", "--json", entry_id], env=env)

    assert shown.exit_code == 0, shown.output
    for char in INVISIBLE:
        if ord(char) > 0x7F:
            assert char not in shown.output, repr(char)
    assert "\\u202eexe.txt\\u202c\\u2066x\\u2069\\u2028line\\u2029para" in shown.output
    assert "\\u200b\\u200d\\ufeff\\U000e0041\\xad" in shown.output
    assert "x-note: \\u202eexe.txt" in shown.output
    assert " ü 中" in shown.output  # letters of any script print as they are
    document = json.loads(as_json.output)
    assert document["body"] == body
    assert document["headers"] == {"x-note": INVISIBLE}


def wsgi(sent: bytes) -> str:
    """A header value as WSGI hands it over: the bytes decoded as latin-1 (PEP 3333)."""
    return sent.decode("latin-1")


def test_show_decodes_utf8_header_bytes_and_json_keeps_the_exact_ones(redis_url: str) -> None:
    headers = {
        "x-note": wsgi("\u202eexe.txt café 中".encode()),  # UTF-8, as clients send it
        "x-latin": wsgi(b"caf\xe9"),  # one latin-1 byte: not UTF-8, shown as WSGI gave it
        "x-ascii": "plain",
    }
    entry_id = keep(redis_url, "standard", "{}", headers, time.time())
    env = {"HOOKFLEET_REDIS_URL": redis_url}

    shown = CliRunner().invoke(main, ["quarantine", "show", entry_id], env=env)
    as_json = CliRunner().invoke(main, ["quarantine", "show", "--json", entry_id], env=env)

    assert shown.exit_code == 0, shown.output
    assert "x-note: \\u202eexe.txt café 中" in shown.output  # decoded, the override escaped
    assert "â" not in shown.output  # no mojibake
    assert "x-latin: café" in shown.output
    document = json.loads(as_json.output)
    assert document["headers"] == {
        "x-ascii": "plain",
        "x-latin": "café",
        "x-note": "\u202eexe.txt café 中",
    }
    # The bytes the sender sent (and a release verifies again), one character per byte.
    assert document["headers_latin1"] == {"x-note": headers["x-note"]}
    sent = document["headers_latin1"]["x-note"].encode("latin-1")
    assert sent == "\u202eexe.txt café 中".encode()
    kept = store(redis_url).find(entry_id)
    assert kept is not None and kept.headers == headers  # stored as received
