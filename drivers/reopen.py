"""Open a device again after it was lost, with the node's one backoff policy (`drivers.backoff`).

The loop is tenacity's public `AsyncRetrying` with `full_jitter` as its wait: tenacity is a
dependency of the hub and its loop is tested upstream. Only the serial, PC/SC and camera drivers
import this module (a node with only MQTT devices never loads tenacity).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from drivers.backoff import full_jitter

__all__ = ["SHORT_SESSION_S", "check_backoff", "open_with_backoff"]

T = TypeVar("T")

SHORT_SESSION_S = 10.0
"""A device lost within this long after opening gets a pause before the next open attempt, so one
that opens and fails at once cannot spin. Each outage starts a fresh backoff."""


def check_backoff(min_s: float, max_s: float) -> None:
    """Raise `ValueError` unless 0 < min_s <= max_s."""
    if not 0 < min_s <= max_s:
        raise ValueError(f"reopen delays need 0 < reopen_min_s <= reopen_max_s, got {min_s} and {max_s}")


async def open_with_backoff(
    open_once: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[Exception], ...],
    min_s: float,
    max_s: float,
    on_failure: Callable[[Exception, float], None],
    floor_s: float = 0.0,
) -> T:
    """Call `open_once` until it succeeds; `on_failure(error, wait_s)` sees each error before the wait.

    The n-th wait is drawn uniformly from [floor_s, min(max_s, min_s * 2**(n-1))], so devices that
    were lost together do not retry in step. Errors outside `retry_on` propagate at once.
    """

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, Exception):
            on_failure(error, state.next_action.sleep if state.next_action is not None else 0.0)

    retrying = AsyncRetrying(
        wait=lambda state: full_jitter(state.attempt_number, min_s, max_s, floor_s=floor_s),
        retry=retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # A coroutine function of our own: tenacity awaits only what it sees as one, not a lambda.
        return await open_once()

    result: T = await retrying(attempt)
    return result
