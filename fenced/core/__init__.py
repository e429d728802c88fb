"""The pure core: configuration, elements, name cache, planner, ruleset, wire parsers.

Nothing in this package reads the clock, touches the system or imports an I/O module:
every function is given what it needs (``now`` included) and returns values; the callers
above (``fenced.kernel``, ``fenced.dns``, ``fenced.daemon``) do the I/O.
"""
