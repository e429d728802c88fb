"""Tests against the real kernel, each inside a network namespace it creates (needs root)."""
