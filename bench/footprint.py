"""Footprint benchmark: start-up time, resident memory and idle CPU of the hub process.

1. Start-up: from starting `python -m hub run` to READY=1 on NOTIFY_SOCKET (the moment systemd
   considers a `Type=notify` unit started), and to /healthz answering 200 (connected to the broker).
   Repeated `--starts` times; the first start creates the outbox and the node secret.
2. Memory: RSS, and USS/PSS (memory only this process holds / its proportional share), of an idle hub
   with `--devices` configured MQTT rating pads connected (each subscribed to its ack, cmd and error
   topics, its retained online state published), after the hub has settled.
3. Idle CPU: CPU time the hub uses over `--idle` seconds with nothing happening, and how often it
   wakes up (context switches per second).

Run from the repository root:  .venv/bin/python bench/footprint.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    NODE_ID,
    CpuMeter,
    Figure,
    HubProc,
    bench_devices,
    memory_of,
    mosquitto_pid,
    print_figures,
    start_broker,
    wait_for_quiet,
    work_dir,
    write_hub_config,
    write_result,
)
from loadgen import MqttLink, open_link

from contract.topics import Topics

TARGET_RSS_MB = 45.0
TARGET_READY_S = 2.0
TARGET_IDLE_CPU_PERCENT = 1.0


def _ignore(_topic: bytes, _payload: bytes) -> None:
    """Idle pads hear nothing of interest."""


async def connect_devices(port: int, device_ids: list[str]) -> list[MqttLink]:
    """Connect idle pads the way firmware does: subscribe to own topics, publish retained online."""
    topics = Topics(NODE_ID)
    links = []
    for device in device_ids:
        link = MqttLink(f"idle-{device}", _ignore)
        await open_link(link, "127.0.0.1", port)
        if await asyncio.wait_for(link.connack, 10) != 0:
            raise ConnectionError(f"{device}: the broker refused the connection")
        for leaf in ("ack", "cmd", "error"):
            await link.subscribe(topics.device(device, leaf))
        state = json.dumps({"online": True, "kind": "pad", "fw": "bench-1"}).encode()
        link.publish(topics.device(device, "state").encode(), state, retain=True)
        links.append(link)
    return links


async def measure_idle(
    hub: HubProc, broker_pid: int, port: int, device_ids: list[str], settle_s: float, idle_s: float
) -> dict[str, Any]:
    """Connect the devices, let the hub settle, then take memory and idle CPU."""
    links = await connect_devices(port, device_ids)
    try:
        await asyncio.sleep(settle_s)
        memory = memory_of(hub.pid)
        broker_memory = memory_of(broker_pid)
        proc = psutil.Process(hub.pid)
        switches_before = sum(proc.num_ctx_switches())
        meter = CpuMeter({"hub": hub.pid, "mosquitto": broker_pid})
        await asyncio.sleep(idle_s)
        cpu = meter.stop()
        switches = sum(proc.num_ctx_switches()) - switches_before
        memory_after = memory_of(hub.pid)
    finally:
        for link in links:
            if link.transport is not None:
                link.transport.write(b"\xe0\x00")
                link.transport.close()
        await asyncio.sleep(0.1)
    return {
        "devices_connected": len(links),
        "memory": memory,
        "memory_after_idle": memory_after,
        "broker_memory": broker_memory,
        "cpu": cpu,
        "wakeups_per_s": round(switches / cpu["wall_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="configured and connected MQTT pads")
    parser.add_argument("--starts", type=int, default=5, help="start-up measurements")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after connecting before measuring")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    count = max(1, min(args.devices, 500))
    starts = max(1, min(args.starts, 20))
    settle = max(0.0, min(args.settle, 60.0))
    idle = max(1.0, min(args.idle, 300.0))
    command = (
        f"python bench/footprint.py --devices {count} --starts {starts} --settle {settle:g} --idle {idle:g}"
    )
    print(command)
    entries = bench_devices(count, "pad")
    device_ids = [entry["id"] for entry in entries]
    load_before = wait_for_quiet()
    with work_dir("footprint") as folder, start_broker(folder / "broker") as broker:
        config, api_port = write_hub_config(folder, broker.port, entries)
        ready, healthy = [], []
        for n in range(starts):
            hub = HubProc(config, api_port, folder)
            hub.start()
            ready.append(hub.ready_s)
            healthy.append(hub.healthy_s)
            hub.stop()
            print(f"  start {n + 1}: READY=1 after {hub.ready_s:.3f} s, healthy after {hub.healthy_s:.3f} s")
        hub = HubProc(config, api_port, folder)
        hub.start()
        try:
            print(f"idle: {count} pads connected, settle {settle:g} s, then {idle:g} s of idle CPU")
            idle_result = asyncio.run(
                measure_idle(hub, mosquitto_pid(broker), broker.port, device_ids, settle, idle)
            )
        finally:
            with contextlib.suppress(Exception):
                hub.stop()
    warm = ready[1:] or ready
    startup: dict[str, Any] = {
        "ready_s": [round(x, 3) for x in ready],
        "healthy_s": [round(x, 3) for x in healthy],
        "first_ready_s": round(ready[0], 3),
        "median_ready_s": round(statistics.median(warm), 3),
        "median_healthy_s": round(statistics.median(healthy[1:] or healthy), 3),
    }
    memory = idle_result["memory"]
    hub_cpu = idle_result["cpu"]["processes"]["hub"]
    figures = {
        "footprint.rss_mb": Figure(
            memory["rss_mb"], "MB", "lower", "idle hub RSS, 50 pads connected", TARGET_RSS_MB
        ),
        "footprint.uss_mb": Figure(
            memory.get("uss_mb", float("nan")), "MB", "lower", "idle hub USS (own pages)"
        ),
        "footprint.idle_cpu": Figure(
            hub_cpu["percent_of_one_core"],
            "% of a core",
            "lower",
            f"idle hub CPU over {idle:g} s",
            TARGET_IDLE_CPU_PERCENT,
        ),
        "footprint.wakeups": Figure(
            idle_result["wakeups_per_s"], "per s", "lower", "idle hub context switches"
        ),
        "footprint.ready_s": Figure(
            startup["median_ready_s"], "s", "lower", "start to READY=1 (median, store exists)", TARGET_READY_S
        ),
        "footprint.first_ready_s": Figure(
            startup["first_ready_s"],
            "s",
            "lower",
            "start to READY=1 (first start, new store)",
            TARGET_READY_S,
        ),
        "footprint.healthy_s": Figure(
            startup["median_healthy_s"], "s", "lower", "start to /healthz 200 (median)"
        ),
    }
    print_figures("Footprint", figures)
    print(
        f"\n  hub threads {memory['threads']:.0f}; after {idle:g} s idle RSS "
        f"{idle_result['memory_after_idle']['rss_mb']:.1f} MB; Mosquitto RSS "
        f"{idle_result['broker_memory']['rss_mb']:.1f} MB"
    )
    details = {
        "devices": count,
        "startup": startup,
        "idle": idle_result,
        "other_load_before_cores": load_before,
        "measured_at": time.time(),
    }
    path = write_result("footprint", command, figures, details)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
