"""hallhub core: config, records, the outbox, the MQTT gateway, the local API and the CLI."""

__version__ = "0.1.0"
