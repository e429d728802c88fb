"""The operations side: Prometheus metrics, the /status document, HTTP, systemd notify.

What operators see of a running daemon. Engines report through ``fenced.ops.metrics``;
``fenced.ops.http`` is the one module that serves HTTP.
"""
