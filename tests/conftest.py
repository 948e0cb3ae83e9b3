"""Fixtures shared by all tests: a private Mosquitto per test, and hygiene checks on every test.

A test fails if it leaves behind threads, child processes or files it opened, and an asyncio test
also if it leaves tasks or timers pending or an exception reached its event loop's handler (a task
whose failure nobody retrieved, a callback that raised). See tests/support/hygiene.py.
A test that provokes such loop errors on purpose says so with
`@pytest.mark.loop_errors_expected("text in the message", reason="why")`.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.ops.broker import MosquittoBroker
from tests.support.hygiene import Snapshot

_BEFORE = pytest.StashKey[Snapshot]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker for expected event-loop errors."""
    config.addinivalue_line(
        "markers",
        "loop_errors_expected(text, reason): errors reaching the event loop whose message or exception "
        "contains `text` are expected in this test (a library's, provoked on purpose)",
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of our own on a free loopback port, with a config the test can extend."""
    instance = MosquittoBroker(workdir=tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Note threads, child processes and open files once the test's fixtures are set up (so a
    module- or session-wide fixture's resources are not taken for the test's)."""
    try:
        return (yield)
    finally:
        item.stash[_BEFORE] = Snapshot.take()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After every fixture is torn down (event loops closed too), fail the test for what it left."""
    result = yield
    before = item.stash.get(_BEFORE, None)
    if before is not None:
        problems = before.left_behind()
        if problems:
            raise AssertionError("; ".join(problems))
    return result


@pytest.fixture(autouse=True)
def loop_checked(request: pytest.FixtureRequest) -> None:
    """Asyncio tests also get `no_loop_leaks`."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("no_loop_leaks")


def _task(task: asyncio.Task[Any]) -> str:
    """A pending task by name and where it waits (its innermost frames)."""
    frames = [
        f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()
    ]
    return f"{task.get_name()} at {' < '.join(reversed(frames[-3:]))}"[:300]


def _describe(context: dict[str, Any]) -> str:
    return f"{context.get('message')}: {context.get('exception')!r}"[:300]


@pytest.fixture
async def no_loop_leaks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail an asyncio test that leaves tasks or timers pending, or whose loop saw an exception."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(_describe(context)))
    timers: list[asyncio.TimerHandle] = []
    schedule = loop.call_at

    def call_at(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        handle = schedule(when, callback, *args, **kwargs)
        timers.append(handle)
        if len(timers) > 10_000:
            timers[:] = [t for t in timers if not t.cancelled() and t.when() > loop.time()]
        return handle

    # An instance attribute, so that call_later (which calls self.call_at) is seen too.
    loop.call_at = call_at  # type: ignore[method-assign]
    yield
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    current = asyncio.current_task()
    tasks = [_task(t) for t in asyncio.all_tasks() if t is not current and not t.done()]
    pending = [repr(t)[:200] for t in timers if not t.cancelled() and t.when() > loop.time()]
    loop.call_at = schedule  # type: ignore[method-assign]
    loop.set_exception_handler(None)
    expected = [m.args[0] for m in request.node.iter_markers("loop_errors_expected")]
    unexpected = [e for e in errors if not any(text in e for text in expected)]
    problems = []
    if tasks:
        problems.append(f"tasks left pending: {tasks}")
    if pending:
        problems.append(f"timers left pending: {pending}")
    if unexpected:
        problems.append(f"exceptions reached the event loop: {unexpected}")
    assert not problems, "; ".join(problems)
