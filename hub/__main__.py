"""`python -m hub` runs the CLI (used by tests that start the hub as a process)."""

from hub.cli.commands import main

main()
