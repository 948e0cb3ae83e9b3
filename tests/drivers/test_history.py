"""The simulators' bounded history lists."""

from __future__ import annotations

import tracemalloc

from contract.mqtt import AckPayload
from drivers.history import HISTORY_KEPT, remember


def test_history_keeps_the_newest_entries_and_stays_a_list() -> None:
    history: list[int] = []
    for n in range(5 * HISTORY_KEPT):
        remember(history, n)
        assert len(history) <= 2 * HISTORY_KEPT
    assert isinstance(history, list)
    assert history[-1] == 5 * HISTORY_KEPT - 1
    assert history == list(range(history[0], 5 * HISTORY_KEPT)), "in order, with no gap"
    assert len(history) >= HISTORY_KEPT


def test_a_simulated_devices_acks_stay_small_through_a_long_demo() -> None:
    """A demo's MQTT device hears an ack for every message it sends: what it keeps must level off
    low. With 1,000 kept (2,000 between trims) it held ~1.3 MB per device, and `hallhub demo` (one
    process: hub, simulators, receiver) kept growing for over an hour."""
    acks: list[AckPayload] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            remember(acks, AckPayload(msg_id=f"{n:032x}", id=f"0190{n:032x}", status="stored", error=None))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(acks) <= 2 * HISTORY_KEPT
    assert held < 200_000, f"{held} bytes held for {len(acks)} acks"
