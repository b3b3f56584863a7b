"""Fetching: the retry policy (pure), per-host gates, and the HTTP clients."""
