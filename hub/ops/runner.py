"""Running a hub as a process: signals, clean shutdown, exit codes."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import resource
import signal
import sys
from collections.abc import Callable

from hub.app import Hub
from hub.config import HubConfig, Secrets
from hub.store.outbox import StoreUnavailable, WriterDied

log = logging.getLogger(__name__)

HubBuilder = Callable[[HubConfig, Secrets], Hub]

EXIT_STORE_UNUSABLE = 1
"""The outbox cannot be opened at start (node.data_dir): a config problem, like a bad node.toml."""
EXIT_WRITER_DIED = 70
"""`EX_SOFTWARE`: the outbox writer stopped; systemd's `Restart=on-failure` starts the hub again."""


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


def run_hub(config: HubConfig, secrets: Secrets, build: HubBuilder = Hub) -> None:
    """Blocking entry point of `hallhub run`: `build` makes the hub (the CLI passes
    `sync.node.build_hub`); a watchdog SIGABRT leaves every thread's stack in the log."""
    enable_stack_dumps()
    raise_open_file_limit()
    try:
        asyncio.run(serve(build(config, secrets)))
    except* StoreUnavailable as group:
        log.error(
            "hub: %s; node.data_dir must be a directory the hallhub user can create and write",
            group.exceptions[0],
        )
        sys.exit(EXIT_STORE_UNUSABLE)
    except* WriterDied as group:
        log.critical("hub: exiting with status %d: %s", EXIT_WRITER_DIED, group.exceptions[0])
        sys.exit(EXIT_WRITER_DIED)


def raise_open_file_limit(wanted: int = 65536) -> None:
    """Lift the soft descriptor limit towards the hard one (systemd's default soft limit is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("hub: cannot raise the open-file limit from %d to %d: %s", soft, target, exc)


def enable_stack_dumps() -> None:
    """Crashes and `kill -USR1 <pid>` print every thread's stack to stderr (the journal)."""
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
