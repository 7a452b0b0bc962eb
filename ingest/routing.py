"""Which queue a delivery goes to: the one routing table, overridable by env.

``HOOKFLEET_ROUTES`` adds or replaces entries, comma-separated: ``provider=queue`` for
all of a provider's events, ``provider:event_type=queue`` for one type, e.g.
``HOOKFLEET_ROUTES="stripe=hookfleet.low,retell:transcript_updated=hookfleet.low"``.
Replays and bulk work go to ``Queue.LOW`` from the CLI, never through this table.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.contract import Queue

HIGH, DEFAULT, LOW = Queue.HIGH, Queue.DEFAULT, Queue.LOW

ROUTES: Mapping[str, Queue] = {
    # A voice call is happening now: its events jump the queue.
    "retell": HIGH,
    "calcom": DEFAULT,
    # Cal.com: a meeting happening now (or an instant meeting someone waits in) first;
    # recordings, transcripts and the test ping are bulk.
    "calcom:MEETING_STARTED": HIGH,
    "calcom:MEETING_ENDED": HIGH,
    "calcom:INSTANT_MEETING": HIGH,
    "calcom:RECORDING_READY": LOW,
    "calcom:RECORDING_TRANSCRIPTION_GENERATED": LOW,
    "calcom:PING": LOW,
    "stripe": DEFAULT,
    "standard": DEFAULT,
}


class Router:
    """Looks up ``provider:event_type``, then ``provider``, then :attr:`Queue.DEFAULT`."""

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        # Settings checked every override names a Queue (HOOKFLEET_ROUTES).
        self._routes = {**ROUTES, **{key: Queue(q) for key, q in (overrides or {}).items()}}

    def queue_for(self, provider: str, event_type: str) -> Queue:
        return self._routes.get(f"{provider}:{event_type}") or self._routes.get(provider) or DEFAULT
