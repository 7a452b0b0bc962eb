"""Which of the receiver's two listeners a request came in on.

gunicorn binds the public listener (``HOOKFLEET_BIND`` or ``0.0.0.0:$PORT``: webhooks and
``/healthz``) and the ops listener (``HOOKFLEET_OPS_BIND``: ``/metrics``, ``/readyz``,
``/stats`` and ``/healthz``), one address unless they are the same
(ingest/gunicorn_conf.py). Each answers only its own routes: an operator endpoint on
the public listener and a webhook on the ops listener are both a JSON 404.

The listener is told by the socket, never by what the client sends: a WSGI server's
``SERVER_PORT`` (PEP 3333) is the listening socket's port for a TCP listener, but for a
unix socket gunicorn (``http/wsgi.py`` ``create``) takes it from the request's ``Host``,
so ``Host: x:9807`` on a unix-socket public listener would pass for the ops listener.
ingest/aio_worker.py puts the listening socket's own port ("" for a unix socket) in
:data:`LISTENER_PORT`; under the gthread fallback the connection's socket
(``gunicorn.socket``) says whether it is a unix one.
"""

from __future__ import annotations

import socket
from typing import Any

from models.settings import Settings

# What the ops listener answers (GET/HEAD; anything else there is a JSON 404), and of
# those what the public listener answers 404 whatever the method.
OPS_PATHS = frozenset({"/metrics", "/readyz", "/stats", "/healthz"})
OPERATOR_ONLY = OPS_PATHS - {"/healthz"}


# The environ key (PEP 3333: a server's own keys carry a prefix) of the listening
# socket's port, "" for a unix socket (ingest/aio_worker.py).
LISTENER_PORT = "hookfleet.listener_port"


def listener_port(environ: dict[str, Any]) -> str:
    """The port of the listener the request came in on ("" for a unix socket)."""
    port = environ.get(LISTENER_PORT)
    if port is not None:
        return str(port)
    if getattr(environ.get("gunicorn.socket"), "family", None) == socket.AF_UNIX:
        return ""
    return str(environ.get("SERVER_PORT", ""))


def public_port(settings: Settings) -> str:
    """The public listener's port as ``SERVER_PORT`` gives it ("" for a unix socket)."""
    if settings.bind:
        host, _, port = settings.bind.rpartition(":")
        return "" if settings.bind.startswith("unix:") or not host else port
    return str(settings.port)


def ops_only_port(settings: Settings) -> str | None:
    """The ops listener's ``SERVER_PORT`` when it is a listener of its own; None when it
    is also the public one (then it serves webhooks too, as the operator asked)."""
    return settings.ops_port if settings.ops_port != public_port(settings) else None


def on_ops_listener(environ: dict[str, Any], settings: Settings) -> bool:
    """True when the request came in on an ops listener of its own (:func:`ops_only_port`)."""
    port = ops_only_port(settings)
    return port is not None and listener_port(environ) == port


def not_served_here(environ: dict[str, Any], settings: Settings) -> bool:
    """True when the request's path (``PATH_INFO``, as the server decoded it) is not one
    its listener serves: anything but :data:`OPS_PATHS` on the ops listener, one of
    :data:`OPERATOR_ONLY` on the public one. Never with one listener for both."""
    port = ops_only_port(settings)
    if port is None:
        return False
    path = environ.get("PATH_INFO", "")
    if listener_port(environ) == port:
        return path not in OPS_PATHS
    return path in OPERATOR_ONLY
