"""The DNS side: asking upstream resolvers, the per-policy gateway, the refresh engine.

One module talks to DNS servers (``resolver``); the gateway answers confined processes
and the refresher keeps names' addresses current, both writing through the
``fenced.kernel.firewall.Firewall`` protocol.
"""
