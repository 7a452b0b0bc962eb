"""Letting kept deliveries in once their cause is fixed: ``hookfleet quarantine release``.

Each selected delivery is verified again by its provider's own code
(``ingest/providers/*``) with the secrets configured *now*, a signed timestamp judged
against the delivery's arrival (``Delivery.received_at``), not against now: a Stripe or
Standard Webhooks delivery that was fresh when it came still passes days later, and one
that was already stale then (a replay, a skewed clock) never does. One that verifies
is parsed and identified as the receiver would (:func:`ingest.views.prepare_job`) and
goes through the receiver's claim + enqueue (:class:`ingest.dedup.DedupGate`): a
delivery the sender retried after the fix is answered as a duplicate and not queued
twice. Released events go to ``hookfleet.low``, like every bulk job from the terminal
(``ingest.routing``), carrying their arrival time as ``received_at``.

A verified question the sender waited on (Retell's ``call_inbound``, ``chat_inbound``)
was answered at the time (the refusal: the caller got the number's default agent), so
it is not let in as if answered now; it leaves the quarantine, counted as
``inbound_answered_then``. (A live one is recorded because Hookfleet answered it.)

Only admitted deliveries (accepted or duplicate) leave the quarantine; every other one
stays, counted by why: its refusal code again, ``verification_off`` (the provider
accepts unsigned deliveries now, so nothing could be verified: nothing is let in
unverified), ``body_not_kept`` (over ``HOOKFLEET_QUARANTINE_MAX_BODY_BYTES``), a content
code (``invalid_json``, ``unknown_shape``: signed but not a delivery the receiver would
take), ``queue_full`` or ``not_replicated``. Running it again is safe: an entry whose
admission was not yet forgotten is a duplicate the second time. Two releases running at
once each claim an entry in Redis before judging it (:meth:`Quarantine.claim`) and hold
the claim until they end, then mark it judged at their end: an entry is admitted, or
counted as staying, by one of them only (a release that started before the other ended
leaves it alone); the other prints it as left to a release running now.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import redis
from werkzeug.http import parse_options_header

from ingest import quarantine as quarantine_store
from ingest.dedup import DedupGate, NotReplicated
from ingest.errors import ApiError
from ingest.providers import REGISTRY
from ingest.providers.base import VerificationError
from ingest.quarantine import Entry, KeptDelivery, Quarantine
from ingest.views import Job, prepare_job
from models.contract import Queue
from models.settings import Settings

BATCH = 100
#: Why a verified delivery may still stay (besides refusal and content codes).
VERIFICATION_OFF = "verification_off"
BODY_NOT_KEPT = "body_not_kept"
UNKNOWN_PROVIDER = "unknown_provider"
QUEUE_FULL = "queue_full"
NOT_REPLICATED = "not_replicated"
#: A verified question the sender waited on (Retell's ``call_inbound``/``chat_inbound``):
#: it was answered at the time, with the refusal, so the caller got the number's
#: default agent. Recording it now would say Hookfleet answered it; the call's own
#: events (``call_started``, ...) say what happened. Forgotten, not let in.
INBOUND_ANSWERED_THEN = "inbound_answered_then"


@dataclass(frozen=True)
class Selection:
    """Which kept deliveries: any of ``providers`` and ``reasons`` (empty: all),
    arrived within ``[since, until)``, or exactly ``ids`` (``provider:stream id``)."""

    providers: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[str, ...] = ()

    def matches(self, entry: Entry) -> bool:
        return (
            (not self.providers or entry.provider in self.providers)
            and (not self.reasons or entry.reason in self.reasons)
            and (self.since is None or entry.arrived >= self.since.timestamp())
            and (self.until is None or entry.arrived < self.until.timestamp())
        )


class UnknownIds(LookupError):
    """``--id`` values that name no kept delivery (never kept, forgotten, or not an id)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"nothing kept with id {', '.join(ids)}")
        self.ids = ids


def select(quarantine: Quarantine, selection: Selection) -> Iterator[Entry]:
    """The selected entries in arrival order across providers (no bodies read).

    Raises UnknownIds, before yielding any, when an id of ``selection.ids`` names no
    kept delivery: a typo must not pass for "nothing to do"."""
    if selection.ids:
        found = {entry_id: quarantine.find(entry_id) for entry_id in selection.ids}
        unknown = [entry_id for entry_id, kept in found.items() if kept is None]
        if unknown:
            raise UnknownIds(unknown)
        for kept in found.values():
            if kept is not None and selection.matches(kept.entry):
                yield kept.entry
        return
    # Each provider's stream is oldest first: merging them keeps arrival order overall.
    streams = [quarantine.entries(p) for p in selection.providers or tuple(REGISTRY)]
    for entry in heapq.merge(*streams, key=lambda entry: entry.arrived):
        if selection.matches(entry):
            yield entry


@dataclass
class ReleaseReport:
    """What a release did, or would do (``dry_run``): ``released`` (queued now),
    ``duplicate`` (already taken in: not queued again), and the ones that stay, by why;
    each with the provider's counts, and a few ids per reason to look at."""

    dry_run: bool
    released: Counter[str] = field(default_factory=Counter)
    duplicate: Counter[str] = field(default_factory=Counter)
    stayed: Counter[str] = field(default_factory=Counter)
    #: Verified but not let in, and forgotten (:data:`INBOUND_ANSWERED_THEN`).
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # A dry run's own claims: a second copy of one delivery would be a duplicate.
    claimed: set[str] = field(default_factory=set)
    #: Entries another release running at the same time held (counted by that one).
    elsewhere: int = 0

    def stay(self, reason: str, entry: Entry) -> None:
        self.stayed[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(entry.id)


class Releaser:
    """Verifies kept deliveries and lets those that pass in (see the module docstring).

    ``dedup`` is the Redis of the dedup keys (for a dry run's duplicate check);
    raises ``redis.RedisError`` when Redis fails mid-way: what was released stays
    released and forgotten, the rest stays kept."""

    def __init__(
        self, settings: Settings, quarantine: Quarantine, gate: DedupGate, dedup: redis.Redis
    ) -> None:
        self._settings = settings
        self._quarantine = quarantine
        self._gate = gate
        self._dedup = dedup
        self._token = ""
        self._held: list[Entry] = []
        self._started = 0.0
        self._renewed = 0.0  # time.monotonic() of the last renewal of the claims held
        #: The report of the release running or last run, also when it raised: what
        #: was done before Redis failed.
        self.report = ReleaseReport(dry_run=False)

    def release(self, entries: Iterable[Entry], *, dry_run: bool) -> ReleaseReport:
        report = self.report = ReleaseReport(dry_run=dry_run)
        self._token = uuid.uuid4().hex
        self._started = 0.0 if dry_run else self._quarantine.clock()
        self._renewed = time.monotonic()
        try:
            self._release_all(entries, report)
        finally:
            held, self._held = self._held, []
            if held:
                # Marked with the end: a release that was running meanwhile and reaches
                # them later leaves them to this one; one started after takes them.
                ended = self._quarantine.clock()
                for start in range(0, len(held), BATCH):
                    self._quarantine.unclaim(held[start : start + BATCH], ended)
        return report

    def _release_all(self, entries: Iterable[Entry], report: ReleaseReport) -> None:
        batch: list[Entry] = []
        for entry in entries:
            self._keep_holding()
            batch.append(entry)
            if len(batch) == BATCH:
                if not self._release_batch(batch, report):
                    return
                batch = []
        if batch:
            self._release_batch(batch, report)

    def _keep_holding(self) -> None:
        """Renew the claims held every third of :data:`~ingest.quarantine.CLAIM_S`: they
        are held to the end of the release, which may run longer than a claim lasts."""
        if self._held and time.monotonic() - self._renewed >= quarantine_store.CLAIM_S / 3:
            for start in range(0, len(self._held), BATCH):
                self._quarantine.hold(self._held[start : start + BATCH])
            self._renewed = time.monotonic()

    def _release_batch(self, batch: list[Entry], report: ReleaseReport) -> bool:
        """Release one batch; False once the queue is full (the rest would be too).
        Only entries this release claims are judged and counted (a dry run changes
        nothing, so it claims nothing). Claims are held until the whole release ends:
        an entry that stays is counted by this release only, not again by a release
        running alongside that reaches it after this batch."""
        if report.dry_run:
            return self._judge_batch(batch, report)
        held = self._quarantine.claim(batch, self._token, self._started)
        report.elsewhere += len(batch) - len(held)
        self._held.extend(held)
        return self._judge_batch(held, report)

    def _judge_batch(self, batch: list[Entry], report: ReleaseReport) -> bool:
        admitted: list[Entry] = []
        going = True
        for kept in self._quarantine.fetch(batch):
            entry = kept.entry
            if not going:
                report.stay(QUEUE_FULL, entry)
                continue
            judged = self._judge(kept)
            if judged == INBOUND_ANSWERED_THEN:
                report.skipped[entry.provider] += 1
                admitted.append(entry)  # forgotten with the admitted ones
                continue
            if isinstance(judged, str):
                report.stay(judged, entry)
                continue
            outcome = self._admit(judged, entry, report)
            if outcome == QUEUE_FULL:
                going = False
            if outcome in (QUEUE_FULL, NOT_REPLICATED):
                report.stay(outcome, entry)
                continue
            (report.released if outcome == "released" else report.duplicate)[entry.provider] += 1
            admitted.append(entry)
        if admitted and not report.dry_run:
            self._quarantine.forget(admitted)
        return going

    def _judge(self, kept: KeptDelivery) -> Job | str:
        """The job of a delivery that verifies now, or why it does not."""
        entry = kept.entry
        provider = REGISTRY.get(entry.provider)
        if provider is None:
            return UNKNOWN_PROVIDER
        if not entry.body_kept:
            return BODY_NOT_KEPT
        settings = self._settings.provider(provider.name)
        if not settings.verify:
            return VERIFICATION_OFF
        if not settings.secrets:
            return "provider_not_configured"
        delivery = kept.delivery()
        try:
            provider.verify(delivery, settings)
        except VerificationError as error:
            return str(error.code)
        mimetype = parse_options_header(kept.headers.get("content-type", ""))[0].lower()
        correlation_id = entry.correlation_id or uuid.uuid4().hex
        try:
            _, identity, job = prepare_job(
                provider, delivery, mimetype, correlation_id, self._settings, _to_low
            )
        except ApiError as error:
            return str(error.code)
        return INBOUND_ANSWERED_THEN if identity.inline else job

    def _admit(self, job: Job, entry: Entry, report: ReleaseReport) -> str:
        """``released``, ``duplicate``, ``queue_full`` or ``not_replicated``."""
        if report.dry_run:
            seen = job.dedup_key in report.claimed or self._dedup.exists(job.dedup_key)
            report.claimed.add(job.dedup_key)
            return "duplicate" if seen else "released"
        claim = entry.correlation_id or uuid.uuid4().hex
        try:
            admission = self._gate.admit(
                job.dedup_key,
                claim,
                job.ttl_s,
                job.queue,
                job.message,
                self._settings.shed_queue_depth,
            )
        except NotReplicated:
            # The claim may stand: the next release finds it (a duplicate, forgotten).
            return NOT_REPLICATED
        if admission.shed:
            return QUEUE_FULL
        return "released" if admission.accepted else "duplicate"


def _to_low(_provider: str, _event_type: str) -> str:
    return Queue.LOW
