"""Beat's integrity task: a thin wrapper around :func:`workers.integrity.check.check`."""

from __future__ import annotations

import logging

from models.contract import INTEGRITY_REPORT
from workers.celery_app import app
from workers.metrics import integrity_found
from workers.runtime import engine

log = logging.getLogger("hookfleet.worker")


@app.task(name=INTEGRITY_REPORT)
def integrity_report() -> dict[str, int]:
    """Run ``hookfleet integrity check`` and export what it finds (beat: hourly).

    It reports and never fixes: merging customers is a decision for a person
    (``hookfleet integrity fix --dry-run`` first).
    """
    from workers.integrity.check import check

    report = check(engine())
    counts = {finding.kind: finding.count for finding in report.findings.values()}
    integrity_found(counts)
    log.info("integrity check", extra={"problems": report.problems, "counts": counts})
    return counts
