"""``hookfleet quarantine list | show | release``: refused deliveries, kept and let in.

The receiver keeps a delivery refused for its signature or an unconfigured provider
(``ingest.quarantine``); once the secret is fixed, ``release`` verifies each again with
the secrets configured now and lets in those that pass (``ingest.quarantine_release``).
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from workers.cli.params import When, invocation_settings, redis_unreachable

if TYPE_CHECKING:
    from ingest.quarantine import Entry, Quarantine
    from ingest.quarantine_release import ReleaseReport, Selection

# The command must answer even when Redis does not: short timeouts.
TIMEOUT_S = 3
# Shown by `show` as their length only: a sender's credentials, not needed to read it.
HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _quarantine() -> Quarantine:
    from ingest.quarantine import Quarantine
    from models.broker.redis_links import redis_client

    settings = invocation_settings()
    return Quarantine(redis_client(settings.redis_url, timeout_s=TIMEOUT_S), settings)


def _selection(
    provider: tuple[str, ...],
    reason: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    ids: tuple[str, ...] = (),
) -> Selection:
    from ingest.providers import REGISTRY
    from ingest.quarantine import REASONS
    from ingest.quarantine_release import Selection

    for name in provider:
        if name not in REGISTRY:
            raise click.BadParameter(f"one of {', '.join(REGISTRY)}", param_hint="--provider")
    for code in reason:
        if code not in REASONS:
            raise click.BadParameter(f"one of {', '.join(REASONS)}", param_hint="--reason")
    return Selection(provider, reason, since, until, ids)


def _filters(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--provider", multiple=True, help="Only this provider (repeatable): stripe, ..."
            ),
            click.option(
                "--reason",
                multiple=True,
                help="Only this refusal (repeatable): invalid_signature, missing_signature, "
                "malformed_signature, timestamp_out_of_tolerance, provider_not_configured.",
            ),
            click.option("--since", type=When(), help="Arrived at or after (ISO or 24h)."),
            click.option("--until", type=When(), help="Arrived before (ISO or 24h)."),
        ]
    ):
        command = option(command)
    return command


def _redis_errors() -> Any:
    import redis

    return redis.RedisError


@click.group()
def quarantine() -> None:
    """Deliveries refused for their signature or an unconfigured provider, kept so they
    can be let in once the secret is fixed."""


@quarantine.command("list")
@_filters
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Show at most N (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(
    provider: tuple[str, ...],
    reason: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Kept deliveries, oldest first (across providers), without their bodies."""
    from ingest.quarantine_release import select

    selection = _selection(provider, reason, since, until)
    shown = 0
    totals: Counter[str] = Counter()
    try:
        for entry in select(_quarantine(), selection):
            totals[entry.provider] += 1
            if limit and shown >= limit:
                continue
            shown += 1
            click.echo(json.dumps(_as_dict(entry)) if as_json else _line(entry, shown == 1))
    except _redis_errors() as error:
        raise redis_unreachable(error) from None
    if as_json:
        return
    if not totals:
        click.echo("nothing kept matches.")
        return
    total = sum(totals.values())
    more = f"; showing {shown}, --limit 0 for all" if shown < total else ""
    click.echo(f"{total} kept ({_per_provider(totals)}){more}")


@quarantine.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (body as text or base64).")
def show_command(entry_id: str, as_json: bool) -> None:
    """One kept delivery (ID as `list` prints it): its headers and body.

    What the sender sent is printed with its control and format characters escaped
    (``\x1b``, ``\u202e``): a body or header must not drive the terminal (OSC/CSI
    sequences) nor reorder what it shows (bidi overrides). ``--json`` is exact JSON."""
    try:
        kept = _quarantine().find(entry_id)
    except _redis_errors() as error:
        raise redis_unreachable(error) from None
    if kept is None:
        raise click.ClickException(f"nothing kept with id {_safe(entry_id)}")
    headers = {
        name: f"({len(value)} characters, hidden)" if name in HIDDEN_HEADERS else _as_sent(value)
        for name, value in sorted(kept.headers.items())
    }
    if as_json:
        # The exact bytes of each header shown decoded: one character per byte.
        as_received = {
            name: value
            for name, value in sorted(kept.headers.items())
            if name not in HIDDEN_HEADERS and _as_sent(value) != value
        }
        document = {**_as_dict(kept.entry), "headers": headers, "headers_latin1": as_received}
        click.echo(json.dumps({**document, **_body(kept.body)}))
        return
    for key, value in _as_dict(kept.entry).items():
        click.echo(f"{key + ':':<16}{_safe(str(value))}")
    click.echo("headers:")
    for name, value in headers.items():
        click.echo(f"  {_safe(name)}: {_safe(value)}")
    if not kept.entry.body_kept:
        click.echo("body: not kept (over HOOKFLEET_QUARANTINE_MAX_BODY_BYTES)")
        return
    body = _body(kept.body)
    if "body" in body:
        click.echo("body:")
        click.echo(_safe(body["body"], keep="\n\t"))
    else:
        click.echo("body (base64, not UTF-8):")
        click.echo(body["body_base64"])


def _as_sent(value: str) -> str:
    """A header value as the sender wrote it. WSGI hands header values over as
    latin-1-decoded str, one character per byte (PEP 3333, "Unicode Issues"), and the
    quarantine keeps them so (a release verifies those very bytes again). Bytes that
    are valid UTF-8, what HTTP clients send for non-ASCII text, are shown decoded
    (``\xe2\x80\xae`` is U+202E, not ``â\x80®``); any other value is shown as WSGI gave
    it (a lone ``\xe9`` is ``é``)."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not one byte per character, or not UTF-8
        return value


def _body(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode()}


# Anything but printable ASCII is looked at (the fast path for ordinary text); escaped
# are the Unicode categories that print nothing or rearrange what follows: Cc (C0, DEL,
# C1: ESC starts CSI/OSC sequences, U+009B/U+009D are CSI/OSC in one character, CR
# rewrites the line), Cf (format: the bidi overrides and isolates U+202A-U+202E,
# U+2066-U+2069 that reorder a line, zero-width characters, U+FEFF, tags), Zl/Zp (U+2028,
# U+2029: a line break to a terminal that honours them) and Cs (lone surrogates).
_LOOKED_AT = re.compile(r"[^\x20-\x7e]")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _safe(text: str, keep: str = "") -> str:
    """``text`` with every control, format or line/paragraph separator character but
    those in ``keep`` written as its Python escape (``\x1b``, ``\u202e``,
    ``\U000e0041``), so printing it cannot move the cursor, set a title or reorder
    what the terminal shows."""

    def escaped(found: re.Match[str]) -> str:
        char = found[0]
        if char in keep or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            return char
        code = ord(char)
        return (
            f"\\x{code:02x}"
            if code < 0x100
            else f"\\u{code:04x}"
            if code < 0x10000
            else f"\\U{code:08x}"
        )

    return _LOOKED_AT.sub(escaped, text)


@quarantine.command("release")
@_filters
@click.option(
    "--id",
    "ids",
    multiple=True,
    metavar="ID",
    help="Release this entry (as `list` prints it); repeat for several: --id A --id B.",
)
@click.option("--dry-run", is_flag=True, help="Only say what would happen.")
def release_command(
    provider: tuple[str, ...],
    reason: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    ids: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Verify kept deliveries with the secrets configured now; let in those that pass.

    A signed timestamp is judged against the delivery's arrival. Those let in go
    through the receiver's dedup onto hookfleet.low and leave the quarantine; the
    others stay, counted by why. Safe to run again.
    """
    from ingest import create_app
    from ingest.quarantine_release import Releaser, UnknownIds, select
    from models.broker.redis_links import redis_client

    settings = invocation_settings()
    selection = _selection(provider, reason, since, until, ids)
    gate = create_app(settings).extensions["hookfleet_gate"]
    quarantine = _quarantine()
    dedup = redis_client(settings.redis_url, timeout_s=TIMEOUT_S)
    releaser = Releaser(settings, quarantine, gate, dedup)
    try:
        report = releaser.release(select(quarantine, selection), dry_run=dry_run)
    except UnknownIds as error:
        raise click.ClickException(f"{_safe(str(error))}; nothing was released") from None
    except _redis_errors() as error:
        raise _release_failed(error, releaser.report) from None
    for line in _report_lines(report):
        click.echo(line)


def _release_failed(error: Exception, report: ReleaseReport) -> click.ClickException:
    """A dry run, or a release that let nothing in yet, changed nothing: a Redis it
    cannot reach is the one line every command gives. Past that, Redis failed mid-way."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    done = sum(report.released.values()) + sum(report.duplicate.values())
    done += sum(report.skipped.values())
    if isinstance(error, RedisConnectionError | RedisTimeoutError) and (report.dry_run or not done):
        return redis_unreachable(error)
    return click.ClickException(
        f"redis failed mid-way ({error}); what was released stays released, run it "
        "again for the rest"
    )


def _report_lines(report: ReleaseReport) -> Iterator[str]:
    released, duplicate = sum(report.released.values()), sum(report.duplicate.values())
    stayed = sum(report.stayed.values())
    if report.dry_run:
        yield f"dry run: would release {released} ({_per_provider(report.released)})"
        yield f"would be duplicates {duplicate} ({_per_provider(report.duplicate)})"
        yield f"would stay {stayed}{':' if stayed else ''}"
    else:
        yield f"released {released} ({_per_provider(report.released)}) onto hookfleet.low"
        yield f"duplicate {duplicate} ({_per_provider(report.duplicate)}): not queued again"
        yield f"still refused {stayed}{':' if stayed else ''}"
    for why, n in report.stayed.most_common():
        yield f"  {why}: {n} (e.g. {', '.join(report.examples[why])})"
    skipped = sum(report.skipped.values())
    if skipped:
        verb = "would forget" if report.dry_run else "forgotten"
        yield (
            f"{verb} {skipped} inbound questions answered when they came "
            f"(inbound_answered_then: {_per_provider(report.skipped)})"
        )
    if report.elsewhere:
        yield f"left to another release running now: {report.elsewhere}"


def _as_dict(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "provider": entry.provider,
        "arrived": datetime.fromtimestamp(entry.arrived, UTC).isoformat(timespec="seconds"),
        "reason": entry.reason,
        "correlation_id": entry.correlation_id,
        "body_bytes": entry.body_bytes,
        "body_kept": entry.body_kept,
        "lane": entry.lane,
    }


def _line(entry: Entry, first: bool) -> str:
    header = (
        f"{'ID':<30} {'ARRIVED (UTC)':<20} {'PROVIDER':<9} {'REASON':<27} BODY\n" if first else ""
    )
    arrived = datetime.fromtimestamp(entry.arrived, UTC).strftime("%Y-%m-%d %H:%M:%S")
    body = f"{entry.body_bytes} B" + ("" if entry.body_kept else " (not kept)")
    return _safe(
        f"{header}{entry.id:<30} {arrived:<20} {entry.provider:<9} {entry.reason:<27} {body}",
        keep="\n",
    )


def _per_provider(counts: Counter[str]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())) or "none"
