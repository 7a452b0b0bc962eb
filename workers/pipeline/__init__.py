"""A queued delivery's road through a worker: the task, the recorded event, retries."""
