"""Running a hub as a process: signals, clean shutdown, exit codes."""

from __future__ import annotations

import asyncio
import faulthandler
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
    """Blocking entry point of `hallhub run`; a watchdog SIGABRT leaves every thread's stack in the log."""
    enable_stack_dumps()
    asyncio.run(serve(Hub(config, secrets)))


def enable_stack_dumps() -> None:
    """Crashes and `kill -USR1 <pid>` print every thread's stack to stderr (the journal)."""
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
