"""Operator commands (``skyserve-admin``): API keys today."""
