"""Stopping asyncio tasks for sure, where a library or a retry loop may swallow a cancellation.

In Python 3.11 a cancellation can be lost: `asyncio.wait_for` may return instead of raising it, a
client library may turn it into its own error (aiomqtt raises `MqttError` when cancelled while
connecting), and `suppress(CancelledError)` around awaiting a child also swallows the parent's own.
A loop that retries on such an error then runs on, and whatever waits for it hangs (the demo's
Ctrl-C did, one time in ten).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait", "raise_if_cancelling"]

log = logging.getLogger(__name__)


def raise_if_cancelling() -> None:
    """Raise `CancelledError` when the current task was asked to stop, even if that was swallowed.

    Call it where a retry loop goes round again after an error it suppressed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], grace_s: float = 1.0, *, what: str = "task"
) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again each `grace_s` any that
    swallowed it, so that a shutdown never hangs on one of them."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            log.warning("%s %s is still running after cancel; cancelling again", what, task.get_name())
