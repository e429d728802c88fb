"""Benchmarks of fenced against the baselines people use today (see bench/README.md).

Benchmarks are not tests: CI does not run them. Each module is one command
(``python -m bench.NAME --help``) that builds its own network namespaces, measures fenced
and its baseline side by side in the same run, prints min/median/max and the ratio, and
removes everything it made.
"""
