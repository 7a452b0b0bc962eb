"""Calling other services: Retell and Cal.com clients, retries, shared circuit breakers."""
