"""open_with_backoff: retries with growing, jittered waits; reports each failure."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from drivers.reopen import check_backoff, open_with_backoff


async def test_retries_until_open_and_reports_failures() -> None:
    attempts: list[int] = []
    failures: list[str] = []

    async def open_once() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 4:
            raise OSError(f"attempt {len(attempts)} failed")
        return "handle"

    def open_later() -> Awaitable[str]:
        """A plain callable returning a coroutine (as a lambda would) must be awaited too."""
        return open_once()

    result = await open_with_backoff(
        open_later,
        retry_on=(OSError,),
        min_s=0.001,
        max_s=0.01,
        on_failure=lambda error, _wait_s: failures.append(str(error)),
    )
    assert result == "handle"
    assert failures == ["attempt 1 failed", "attempt 2 failed", "attempt 3 failed"]


async def test_other_errors_propagate_at_once() -> None:
    async def open_once() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await open_with_backoff(
            open_once, retry_on=(OSError,), min_s=0.001, max_s=0.01, on_failure=lambda _error, _wait_s: None
        )


@pytest.mark.parametrize(("low", "high"), [(0, 1), (2, 1), (-1, 5)])
def test_bad_delays_are_refused(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="reopen"):
        check_backoff(low, high)
