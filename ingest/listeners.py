"""Which of the receiver's two listeners a request came in on.

gunicorn binds the public listener (``HOOKFLEET_BIND`` or ``0.0.0.0:$PORT``: webhooks and
``/healthz``) and the ops listener (``HOOKFLEET_OPS_BIND``: ``/metrics``, ``/readyz``,
``/stats`` and ``/healthz``), one address unless they are the same
(ingest/gunicorn_conf.py). Each answers only its own routes: an operator endpoint on
the public listener and a webhook on the ops listener are both a JSON 404.

A WSGI server reports the listener's port in ``SERVER_PORT`` (PEP 3333; gunicorn
``http/wsgi.py`` ``create`` and ingest/aio_worker.py take it from the listening socket's
address, never from the request's ``Host`` for a TCP listener).
"""

from __future__ import annotations

from typing import Any

from models.settings import Settings

# What the ops listener answers (GET/HEAD; anything else there is a JSON 404), and of
# those what the public listener answers 404 whatever the method.
OPS_PATHS = frozenset({"/metrics", "/readyz", "/stats", "/healthz"})
OPERATOR_ONLY = OPS_PATHS - {"/healthz"}


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
    return port is not None and environ.get("SERVER_PORT") == port


def not_served_here(environ: dict[str, Any], settings: Settings) -> bool:
    """True when the request's path (``PATH_INFO``, as the server decoded it) is not one
    its listener serves: anything but :data:`OPS_PATHS` on the ops listener, one of
    :data:`OPERATOR_ONLY` on the public one. Never with one listener for both."""
    port = ops_only_port(settings)
    if port is None:
        return False
    path = environ.get("PATH_INFO", "")
    if environ.get("SERVER_PORT") == port:
        return path not in OPS_PATHS
    return path in OPERATOR_ONLY
