"""The performance benchmark: ``python -m tests.bench.run`` (a script, not a test).

It compares Hookfleet with the bare-Flask ceiling and with the usual recipe (SET NX +
``send_task`` per request), and Hookfleet's workers with Celery's own no-op ceiling and
a naive one-commit-per-event worker, all in one run on one machine. See the README's
"Performance" section.
"""
