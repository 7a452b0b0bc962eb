"""Celery workers: turn queued deliveries into rows. Import ``workers.celery_app``."""
