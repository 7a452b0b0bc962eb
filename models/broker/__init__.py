"""The broker's wire formats without Celery or kombu: message envelope, backlog, links.

Pure enough for the receiver to import."""
