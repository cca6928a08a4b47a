"""Helpers every layer shares.

Argument checks (``validation``), optional imports (``optional``) and process settings for runs (``runtime``).
"""
