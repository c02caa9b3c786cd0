"""Dash apps and an HTTP client that drives them as dash-renderer does, for the dash_adapter tests."""
