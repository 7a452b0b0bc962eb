"""The worker side of the broker: kombu transport, leases, batching, failover links.

Everything here knows Celery/kombu internals; ``UPGRADING`` in the README lists them."""
