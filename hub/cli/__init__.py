"""hub.cli: the `hallhub` command line (CONTRACTS §8) and `hallhub demo`."""

from hub.cli.commands import app, main

__all__ = ["app", "main"]
