"""Stopping tasks for sure (`drivers.tasks`): a cancellation that a library turned into its own
error, or that Python 3.11's `asyncio.wait_for` lost, still stops a retry loop; the demo's Ctrl-C
hung one time in ten on the window PC simulator before (CI, 2026-12-07)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
import pytest

from drivers.tasks import cancel_and_wait, raise_if_cancelling
from hub.ops.broker import MosquittoBroker
from hub.simulate.window_pc import WindowPcSimulator


async def _library_call() -> None:
    """A call that reports its own cancellation as its error, as aiomqtt does while connecting."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise aiomqtt.MqttError("disconnected") from None


async def _retry_loop(*, checked: bool, rounds: list[int], max_rounds: int = 100) -> None:
    """Retry on the library's error, as every simulator's reconnect loop does (`max_rounds`: the
    control ends by itself, having swallowed that many cancellations)."""
    while len(rounds) < max_rounds:
        if checked:
            raise_if_cancelling()
        rounds.append(1)
        with contextlib.suppress(aiomqtt.MqttError):
            await _library_call()


async def test_a_retry_loop_stops_on_a_cancellation_disguised_as_a_library_error() -> None:
    rounds: list[int] = []
    task = asyncio.create_task(_retry_loop(checked=True, rounds=rounds))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert len(rounds) == 1


async def test_cancel_and_wait_cancels_again_what_swallowed_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []
    task = asyncio.create_task(_retry_loop(checked=False, rounds=rounds, max_rounds=3), name="swallower")
    await asyncio.sleep(0.01)
    await asyncio.wait_for(cancel_and_wait([task], grace_s=0.05, what="simulator"), 2)
    assert task.done()
    assert len(rounds) == 3, "the control: each round swallowed one cancellation"
    assert caplog.text.count("simulator swallower is still running after cancel; cancelling again") == 2


@pytest.mark.loop_errors_expected(
    "Unexpected disconnection",
    reason="aiomqtt's connect future, when the client is cancelled while connecting",
)
@pytest.mark.loop_errors_expected(
    "Exception in callback None(): CancelledError",
    reason="paho's callback into aiomqtt, cancelled while connecting",
)
async def test_the_window_pc_stops_whenever_it_is_cancelled(broker: MosquittoBroker) -> None:
    """Cancelled at 120 moments of its start (connecting, subscribing, signing staff in, asking):
    it always ends at once. Before, about one in fifty ran on (aiomqtt's publish swallowed it)."""
    slowest = 0.0
    for attempt in range(120):
        pc = WindowPcSimulator(
            "127.0.0.1", broker.port, "n1", ["01"], mean_interval_s=0.05, timeout_s=5, staff=True
        )
        task = asyncio.create_task(pc.run())
        await asyncio.sleep((attempt % 40) * 0.0005)
        task.cancel()
        started = time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=2)
        if not done:
            await cancel_and_wait([task], grace_s=0.1)
        slowest = max(slowest, time.monotonic() - started)
        assert done, f"attempt {attempt}: still running 2 s after cancel"
    assert slowest < 2
