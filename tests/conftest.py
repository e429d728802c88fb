"""Project-wide pytest configuration: loads the test bed fixtures (``bed``)."""

pytest_plugins = ["tests.bed.fixtures"]
