"""Running a hub as a process: signals, clean shutdown, exit codes."""

from __future__ import annotations

import asyncio
import logging
import signal

from hub.app import Hub
from hub.config import HubConfig, Secrets

log = logging.getLogger(__name__)


async def serve(hub: Hub) -> None:
    """Run `hub` until SIGTERM or SIGINT, then stop intake, flush the writer and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await hub.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_hub(config: HubConfig, secrets: Secrets) -> None:
    """Blocking entry point of `hallhub run`."""
    asyncio.run(serve(Hub(config, secrets)))
