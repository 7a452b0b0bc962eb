"""The business record: calls, appointments, customers. No Celery, no Redis."""
