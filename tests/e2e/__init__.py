"""Tests that start real gunicorn and celery worker processes; marked e2e by folder."""
