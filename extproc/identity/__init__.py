"""Entra ID tokens for Azure: one process keeps one token per credential for the whole gateway (azure-identity's
asyncio credentials) and publishes it to the workers (extproc/auth/upstream.py EntraToken reads it)."""
