"""Keypad path: KEY-to-ACK latency with 20 serial keypads rating at once, and the line budget at 9600 baud.

Twenty simulated HKP/1 keypads (five per RS-485 line, four lines) sit on pseudo-terminals; a window
PC asks for an evaluation at every window in rounds, each keypad presses as soon as it is prompted,
and the time from the KEY frame written to its ACK read back is taken at the keypad's end of the
line (it includes the durable commit). Wire bytes are counted from the codec's own frames.

    python bench/keypad.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from drivers.keypad.codec import Ack, Key, Ping, Pong, Prompt, Show, Status, encode_frame, make_frame
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine

LINES = 4
PER_LINE = 5
BAUD = 9600
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop


def wire_budget(thanks_text: str = "感谢您的评价", prompt_text: str = "07号窗口 张三") -> dict[str, Any]:
    """Bytes on the line per evaluation and per keypad heartbeat, from real encoded frames."""

    def size(payload: Any) -> int:
        return len(encode_frame(make_frame(1, 1, payload)))

    ack = size(Ack(1, 0x90))
    evaluation = {
        "PROMPT": size(Prompt(42, 60, prompt_text)),
        "ACK of PROMPT": ack,
        "KEY": size(Key(42, 2, ("R1", "R2"))),
        "ACK of KEY": ack,
        "SHOW (thanks)": size(Show(thanks_text)),
        "ACK of SHOW": ack,
    }
    per_eval = sum(evaluation.values())
    heartbeat = {
        "PING": size(Ping()),
        "ACK of PING": ack,
        "PONG": size(Pong("HKP-SIM 1.0")),
        "ACK of PONG": ack,
        "STATUS": size(Status(0)),
        "ACK of STATUS": ack,
    }
    per_heartbeat = sum(heartbeat.values())  # every 10 s per keypad
    bytes_per_s = BAUD / BITS_PER_BYTE
    heartbeat_load = per_heartbeat / 10.0  # bytes/s per keypad
    # A line at 50 % utilisation (RS-485 is half duplex; leave room for retries and turnaround).
    usable = bytes_per_s * 0.5
    busy_hall_evals_per_keypad_s = 1 / 120  # one evaluation every two minutes per window
    per_keypad = heartbeat_load + busy_hall_evals_per_keypad_s * per_eval
    return {
        "frames_per_evaluation": evaluation,
        "bytes_per_evaluation": per_eval,
        "ms_on_wire_per_evaluation": round(per_eval * BITS_PER_BYTE / BAUD * 1000, 1),
        "heartbeat_frames_per_10s": heartbeat,
        "heartbeat_bytes_per_keypad_s": round(heartbeat_load, 2),
        "line_bytes_per_s": bytes_per_s,
        "keypads_per_line_at_50pct": int(usable // per_keypad),
        "assumption": (
            "9600 8N1, heartbeat every 10 s, one evaluation per window every 2 minutes, 50 % line use;"
            " RS-485 also limits a line to 32 unit loads (more with 1/8-load transceivers)"
        ),
    }


async def measure(rounds: int, folder: Path) -> tuple[list[float], dict[str, Any]]:
    """Run `rounds` of 20 concurrent sessions; return KEY->ACK times in ms."""
    tty = folder / "tty"
    tty.mkdir()
    latencies: list[float] = []
    windows = {}
    keypads: list[list[SimulatedKeypad]] = []
    devices = []

    def answer(keypad: SimulatedKeypad, prompt: Prompt) -> None:
        press = keypad.press(1 + prompt.session % 5, session=prompt.session)
        started = time.perf_counter()

        async def timed() -> None:
            await press.acked.wait()
            latencies.append((time.perf_counter() - started) * 1000)

        asyncio.get_running_loop().create_task(timed())

    for line_no in range(LINES):
        members = []
        for address in range(1, PER_LINE + 1):
            window = f"{line_no}{address}"
            windows[window] = address
            members.append(SimulatedKeypad(address, on_prompt=answer))
            devices.append(
                {
                    "id": f"kp-{window}",
                    "kind": "keypad",
                    "transport": "serial",
                    "port": str(tty / f"line{line_no}"),
                    "address": address,
                    "window": window,
                }
            )
        keypads.append(members)
    with start_broker(folder / "broker") as broker:
        config_path, api_port = write_hub_config(folder, broker.port, devices)
        async with contextlib.AsyncExitStack() as stack:
            for line_no, members in enumerate(keypads):
                await stack.enter_async_context(SimulatedLine(tty / f"line{line_no}", members))
            hub = HubProc(config_path, api_port, folder)
            hub.start()
            try:
                await asyncio.sleep(2.0)
                async with aiomqtt.Client("127.0.0.1", broker.port) as pc:
                    for round_no in range(rounds):
                        before = len(latencies)
                        for window in windows:
                            body = {"request_id": f"r{round_no}-{window}", "case_no": f"C{round_no}-{window}"}
                            await pc.publish(
                                f"hall/v1/{NODE_ID}/window/{window}/evaluate", json.dumps(body), qos=1
                            )
                        async with asyncio.timeout(30):
                            while len(latencies) < before + len(windows):
                                await asyncio.sleep(0.01)
                        await asyncio.sleep(0.3)
            finally:
                hub.stop()
    return latencies, {"keypads": len(devices), "lines": LINES, "rounds": rounds}


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds of 20 concurrent sessions")
    args = parser.parse_args()
    with work_dir("keypad") as folder:
        latencies, details = asyncio.run(measure(args.rounds, folder))
    stats = summarize_ms(latencies)
    budget = wire_budget()
    figures = {
        "keypad.key_ack_p50": Figure(stats["p50"], "ms", "lower", "KEY->ACK p50, 20 keypads at once"),
        "keypad.key_ack_p99": Figure(stats["p99"], "ms", "lower", "KEY->ACK p99, 20 keypads at once"),
        "keypad.bytes_per_evaluation": Figure(
            budget["bytes_per_evaluation"], "bytes", "lower", "bytes on the wire per evaluation"
        ),
        "keypad.keypads_per_line": Figure(
            budget["keypads_per_line_at_50pct"], "keypads", "higher", "keypads one 9600-baud line carries"
        ),
    }
    print_figures("Keypad path (HKP/1 over pty, hub as a process)", figures)
    print(f"\nKEY->ACK over {stats['count']} presses: {stats}")
    print(f"wire budget: {json.dumps(budget, ensure_ascii=False, indent=1)}")
    command = "python bench/keypad.py " + " ".join(sys.argv[1:])
    write_result("keypad", command.strip(), figures, {**details, "latency_ms": stats, "wire": budget})


if __name__ == "__main__":
    main()
