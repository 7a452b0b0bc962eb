"""The receiver↔worker contract: the queues, the task names, and the event message.

Both sides import this module (``models`` is the layer both may import), so each fact
is declared once: the receiver builds an :class:`EventMessage` and queues
``to_kwargs()`` as the keyword arguments of :data:`PROCESS_EVENT`; the worker reads
them back with :meth:`EventMessage.from_kwargs`, which refuses a message that lacks a
field instead of filling it in. The replay and stuck-work publishers build the same
message from a ``webhook_events`` row.

The layout on the wire (task protocol 2 keyword arguments, JSON) is the one every
Hookfleet version has written: ``provider``, ``event_id``, ``event_type``, ``queue``,
``correlation_id``, ``received_at`` (ISO-8601 with offset), ``headers`` (object),
``payload`` (the body as JSON text), and ``replay`` (``true``) on replays only. A
message queued by an older version is read unchanged (``tests/unit/test_contract.py``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final


class Queue(enum.StrEnum):
    """The Celery queues (Redis lists of the same name). The values are the names on
    the broker and in the Procfile, systemd units and k8s manifests: renaming one
    strands whatever waits on the old list."""

    HIGH = "hookfleet.high"  # a call happening now
    DEFAULT = "hookfleet.default"
    LOW = "hookfleet.low"  # replays and bulk work
    PROVISIONING = "hookfleet.provisioning"  # Retell agent set-up (slow outbound calls)


QUEUES: Final[tuple[Queue, ...]] = tuple(Queue)

# Task names: what the receiver and the publishers queue by, and what the worker
# registers. The receiver never imports the worker's task objects.
PROCESS_EVENT: Final = "hookfleet.process_event"
SWEEP_STUCK: Final = "hookfleet.sweep_stuck"
REPORT_QUEUE_DEPTHS: Final = "hookfleet.report_queue_depths"
INTEGRITY_REPORT: Final = "hookfleet.integrity_report"
PRUNE_EVENTS: Final = "hookfleet.prune_events"


class MalformedMessage(ValueError):
    """Task arguments that are not an event message: a field is missing or has the
    wrong type. ``missing`` names the absent fields, ``reason`` says what is wrong."""

    def __init__(self, reason: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


# The fields every message carries, with the JSON type each must have.
_REQUIRED: Final[Mapping[str, type]] = {
    "provider": str,
    "event_id": str,
    "event_type": str,
    "queue": str,
    "correlation_id": str,
    "received_at": str,
    "headers": dict,
    "payload": str,
}


# What json.dumps(..., separators=(",", ":")) uses for a string, and the encoder itself.
_json_string = json.encoder.encode_basestring_ascii
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
_REPLAY_MEMBER = ',"replay":true'


@dataclass(frozen=True)
class EventMessage:
    """One delivery as the receiver queued it: the arguments of ``process_event``.

    ``event_type`` may be empty (a provider whose body names none); ``queue`` is the
    :class:`Queue` the receiver chose (a row from an older version may name one this
    version no longer declares); ``payload`` is the body as JSON text, decoded by the
    rule of :mod:`models.payloads`. ``replay`` marks a deliberate replay
    (``hookfleet replay``): the effect is applied again whatever the event's status.
    """

    provider: str
    event_id: str
    event_type: str
    queue: str
    correlation_id: str
    received_at: datetime
    headers: Mapping[str, str]
    payload: str
    replay: bool = False

    def to_kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments, in the wire layout above (``replay`` only
        when true, as the receiver has always written it: absent means false)."""
        kwargs: dict[str, Any] = {
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "queue": self.queue,
            "correlation_id": self.correlation_id,
            "received_at": self.received_at.isoformat(),
            "headers": dict(self.headers),
            "payload": self.payload,
        }
        if self.replay:
            kwargs["replay"] = True
        return kwargs

    def kwargs_json(self) -> str:
        """:meth:`to_kwargs` as compact ASCII JSON, byte for byte what
        ``json.dumps(self.to_kwargs(), separators=(",", ":"))`` writes, built directly:
        the receiver encodes one per delivery, and the general encoder's set-up cost
        more than the encoding (``tests/unit/test_contract.py`` compares the two)."""
        text = _json_string
        try:
            headers = ",".join([f"{text(k)}:{text(v)}" for k, v in self.headers.items()])
            return (
                f'{{"provider":{text(self.provider)},"event_id":{text(self.event_id)},'
                f'"event_type":{text(self.event_type)},"queue":{text(self.queue)},'
                f'"correlation_id":{text(self.correlation_id)},'
                f'"received_at":{text(self.received_at.isoformat())},'
                f'"headers":{{{headers}}},"payload":{text(self.payload)}'
                f"{_REPLAY_MEMBER if self.replay else ''}}}"
            )
        except TypeError:  # a value that is not text: the general encoder decides
            return _compact_json(self.to_kwargs())

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> EventMessage:
        """The message in a task's keyword arguments.

        Raises :class:`MalformedMessage` when a field is missing, has the wrong type,
        or ``received_at`` is not an ISO-8601 timestamp with an offset: nothing is
        filled in. Keys
        this version does not know are ignored (a newer receiver may add one during
        a rolling upgrade).
        """
        missing = tuple(name for name in _REQUIRED if name not in kwargs)
        if missing:
            raise MalformedMessage(
                f"the task message lacks {', '.join(missing)} (present: "
                f"{', '.join(sorted(map(str, kwargs))) or 'nothing'})",
                missing,
            )
        wrong = [
            f"{name} is {type(kwargs[name]).__name__}, not {kind.__name__}"
            for name, kind in _REQUIRED.items()
            if not isinstance(kwargs[name], kind)
        ]
        replay = kwargs.get("replay", False)
        if not isinstance(replay, bool):
            wrong.append(f"replay is {type(replay).__name__}, not bool")
        if wrong:
            raise MalformedMessage("the task message has " + "; ".join(wrong))
        try:
            received_at = datetime.fromisoformat(kwargs["received_at"])
        except ValueError:
            received_at = None
        if received_at is None or received_at.tzinfo is None:
            raise MalformedMessage(
                f"received_at {kwargs['received_at'][:64]!r} is not an ISO-8601 timestamp "
                "with a UTC offset"
            )
        return cls(
            provider=kwargs["provider"],
            event_id=kwargs["event_id"],
            event_type=kwargs["event_type"],
            queue=kwargs["queue"],
            correlation_id=kwargs["correlation_id"],
            received_at=received_at,
            headers=dict(kwargs["headers"]),
            payload=kwargs["payload"],
            replay=replay,
        )
