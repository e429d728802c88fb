"""Unit tests of the wire parsers (fenced.core.wire), with real client bytes and fuzzing."""
