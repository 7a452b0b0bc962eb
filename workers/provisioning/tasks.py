"""The provisioning task: a thin wrapper around provisioner.provision_branch."""

from __future__ import annotations

import logging

from celery import Task

from models.logs import log_context
from workers.celery_app import app
from workers.outbound.errors import ApiUnavailable, CircuitOpen
from workers.outbound.policy import task_countdown
from workers.provisioning.provisioner import (
    PROVISIONING_QUEUE,
    ProvisioningBusy,
    provision_branch,
)
from workers.runtime import sessions
from workers.runtime import settings as runtime_settings

log = logging.getLogger("hookfleet.provisioning")

TASK_NAME = "hookfleet.provision_branch"


@app.task(name=TASK_NAME, bind=True, max_retries=5, queue=PROVISIONING_QUEUE)
def provision_branch_task(self: Task, branch_id: int, check_connectivity: bool = False) -> str:
    """Provision one branch. Transient failures (Retell down or rate-limiting us with
    429/503, breaker open, another run busy) come back later — after the service's
    Retry-After when it sent one — and leave the Agent row ``retrying``; a refusal or
    another 4xx is final (``failed``), and so is a transient failure once the retries
    are spent."""
    attempt = self.request.retries + 1
    log_context.set({"task": self.name, "branch_id": branch_id, "attempt": attempt})
    settings = runtime_settings()
    retries_left = self.request.retries < self.max_retries
    try:
        outcome = provision_branch(
            sessions(),
            branch_id,
            settings,
            check_connectivity=check_connectivity,
            will_retry=retries_left,
        )
    except (ApiUnavailable, CircuitOpen, ProvisioningBusy) as error:
        if not retries_left:
            raise
        # Past the breaker's reset timeout, so the retry is the breaker's trial call;
        # unless the service said when to come back (Retry-After).
        countdown = settings.outbound.breaker_reset_s + 2 ** (self.request.retries + 1)
        if isinstance(error, ApiUnavailable):
            countdown = task_countdown(error, countdown)
        log.warning(
            "provisioning will retry", extra={"error": str(error), "countdown_s": countdown}
        )
        raise self.retry(exc=error, countdown=countdown) from None
    log.info(
        "provisioning finished",
        extra={"outcome": outcome.action, "agent_id": outcome.agent_id},
    )
    return outcome.action


def enqueue_provisioning(branch_id: int, check_connectivity: bool = False) -> str:
    """Queue provisioning on the provisioning queue; returns the task id."""
    result = app.send_task(
        TASK_NAME,
        kwargs={"branch_id": branch_id, "check_connectivity": check_connectivity},
        queue=PROVISIONING_QUEUE,
    )
    return str(result.id)
