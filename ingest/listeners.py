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
A listener is named by its TCP port, or ``unix:PATH`` for a unix socket (the bind
setting's own spelling): ingest/aio_worker.py puts the listening socket's name in
:data:`LISTENER_PORT`; under the gthread fallback the connection's socket
(``gunicorn.socket``) gives it (an accepted unix socket's ``getsockname()`` is the
listener's path, unix(7)).
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
# socket's name: its port, or ``unix:PATH`` (ingest/aio_worker.py).
LISTENER_PORT = "hookfleet.listener_port"


def listener_name(address: Any) -> str:
    """A listening socket's name from its ``getsockname()``: the port of a TCP one
    (``(host, port, ...)``), ``unix:PATH`` of a unix one (str or bytes path)."""
    if isinstance(address, tuple | list):
        return str(address[1])
    if isinstance(address, bytes):
        address = address.decode("utf-8", "surrogateescape")
    return f"unix:{address}"


def listener_port(environ: dict[str, Any]) -> str:
    """The name (:func:`listener_name`) of the listener the request came in on."""
    port = environ.get(LISTENER_PORT)
    if port is not None:
        return str(port)
    sock = environ.get("gunicorn.socket")
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        try:
            return listener_name(sock.getsockname())
        except OSError:
            return "unix:"
    return str(environ.get("SERVER_PORT", ""))


def public_port(settings: Settings) -> str:
    """The public listener's name (:func:`listener_name`): ``$PORT``, the port of
    ``HOOKFLEET_BIND``, or ``unix:PATH``."""
    if settings.bind:
        if settings.bind.startswith("unix:"):
            return settings.bind
        host, _, port = settings.bind.rpartition(":")
        return "" if not host else port
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
