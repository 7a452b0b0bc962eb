"""Provisioning Retell voice agents for branches: validate, then create or update."""
