"""hallhub core: the node daemon. Sub-packages by job: ingest, hall, store, api, privacy, ops, cli."""

__version__ = "0.1.0"
