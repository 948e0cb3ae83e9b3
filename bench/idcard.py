"""ID card reader: time from a card placed on the reader to the `card` event on MQTT.

A simulated SAM reader on a pseudo-terminal; the hub runs as a process and polls it (find card no
faster than every 300 ms, CONTRACTS §4); the clock starts when the card is placed and stops when
`events/card` arrives, so it covers polling, the full read (1,295 bytes), HMAC and the commit.

    python bench/idcard.py [--cards 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from _common import (
    NODE_ID,
    Figure,
    HubProc,
    print_figures,
    start_broker,
    summarize_ms,
    work_dir,
    write_hub_config,
    write_result,
)

from drivers.idcard.simulator import SimulatedSamReader, demo_cards


async def measure(cards: int, folder: Path) -> list[float]:
    """Place `cards` cards one after another; return placed->event times in ms."""
    link = folder / "idcard"
    devices = [{"id": "id-01", "kind": "idcard", "transport": "serial", "port": str(link), "window": "01"}]
    times: list[float] = []
    deck = demo_cards()
    with start_broker(folder / "broker") as broker:
        config_path, api_port = write_hub_config(folder, broker.port, devices)
        async with SimulatedSamReader(link) as reader:
            hub = HubProc(config_path, api_port, folder)
            hub.start()
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    await client.subscribe(f"hall/v1/{NODE_ID}/events/card", qos=1)
                    await asyncio.sleep(1.0)
                    messages = client.messages
                    for n in range(cards):
                        placed = time.perf_counter()
                        reader.place_card(deck[n % len(deck)])
                        async with asyncio.timeout(10):
                            message = await anext(messages)
                        times.append((time.perf_counter() - placed) * 1000)
                        payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                        assert json.loads(payload)["kind"] == "card"
                        reader.remove_card()
                        await asyncio.sleep(1.0 + (n % 3) * 0.1)
            finally:
                hub.stop()
    return times


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cards", type=int, default=20, help="cards to place, one after another")
    args = parser.parse_args()
    with work_dir("idcard") as folder:
        times = asyncio.run(measure(args.cards, folder))
    stats = summarize_ms(times)
    figures = {
        "idcard.placed_to_event_p50": Figure(stats["p50"], "ms", "lower", "card placed -> card event p50"),
        "idcard.placed_to_event_max": Figure(stats["max"], "ms", "lower", "card placed -> card event max"),
    }
    print_figures("ID card reader (SAM over pty, hub as a process)", figures)
    print(f"\nplaced->event over {stats['count']} cards: {stats}")
    details: dict[str, Any] = {"latency_ms": stats, "poll_interval_ms": 300}
    write_result("idcard", ("python bench/idcard.py " + " ".join(sys.argv[1:])).strip(), figures, details)


if __name__ == "__main__":
    main()
