"""Tests for fenced (unit tests in ``tests.unit``, the namespace test bed in ``tests.bed``)."""
