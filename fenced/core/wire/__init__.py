"""Pure parsers of a new flow's first payload: TLS ClientHello, HTTP/1.x request, QUIC Initial.

Used by ``verify_names`` (issue 13), not yet enforced: nothing in the daemon calls them yet.
Every parser takes bytes and returns a :data:`~fenced.core.wire.result.WireResult`; none
raises on any input, reads the clock or does I/O (the caller passes ``now`` where time matters).
"""
