"""One device, one rating at a time: publish -> durable commit -> ack, the latency a citizen's press sees.

python bench/roundtrip.py [--ratings 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from _common import (
    NODE_ID,
    Figure,
    HubProc,
    bench_devices,
    print_figures,
    start_broker,
    summarize_ms,
    work_dir,
    write_hub_config,
    write_result,
)

from hub.simulate.mqtt_device import SimulatedMqttDevice


async def measure(ratings: int, folder: Path) -> list[float]:
    """Sequential ratings from one simulated terminal; returns round trips in ms."""
    times: list[float] = []
    with start_broker(folder / "broker") as broker:
        config_path, api_port = write_hub_config(folder, broker.port, bench_devices(1))
        hub = HubProc(config_path, api_port, folder)
        hub.start()
        try:
            async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as device:
                for n in range(20):
                    await device.rate(5, msg_id=f"warm-{n}")
                for n in range(ratings):
                    started = time.perf_counter()
                    ack = await device.rate(1 + n % 5, msg_id=f"r{n}")
                    times.append((time.perf_counter() - started) * 1000)
                    assert ack.status == "stored"
        finally:
            hub.stop()
    return times


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratings", type=int, default=300, help="ratings, one after another")
    args = parser.parse_args()
    with work_dir("roundtrip") as folder:
        times = asyncio.run(measure(args.ratings, folder))
    stats = summarize_ms(times)
    figures = {
        "roundtrip.p50": Figure(stats["p50"], "ms", "lower", "one rating: publish -> durable -> ack p50"),
        "roundtrip.p99": Figure(stats["p99"], "ms", "lower", "one rating: publish -> durable -> ack p99"),
    }
    print_figures("Rating round trip (one device, hub as a process)", figures)
    print(f"\n{stats}")
    write_result(
        "roundtrip",
        ("python bench/roundtrip.py " + " ".join(sys.argv[1:])).strip(),
        figures,
        {"latency_ms": stats},
    )


if __name__ == "__main__":
    main()
