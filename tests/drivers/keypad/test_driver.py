"""KeypadLineDriver over a real pty pair against simulated keypads (the hub side is a test sink)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import serial

from drivers.base import (
    DeviceFault,
    DeviceOffline,
    DeviceOnline,
    Driver,
    FrameDropped,
    Outcome,
)
from drivers.keypad import (
    KeypadCommandError,
    KeypadLineDriver,
    KeypadTimings,
    KeyPressed,
)
from drivers.keypad.codec import (
    Ack,
    Command,
    Frame,
    Key,
    NakCode,
    Prompt,
    Status,
    encode_frame,
    make_frame,
)
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.ingest.intake import FREE_RATING_DEDUP_WINDOW_S, rating_dedup
from hub.store.outbox import DedupKey
from tests.drivers.keypad.helpers import FAST, RecordingSink, eventually, running


def key_acks(keypad: SimulatedKeypad) -> list[Ack]:
    return [ack for ack in keypad.acks_received if ack.cmd == Command.KEY]


def received(keypad: SimulatedKeypad, command: Command) -> list[Frame]:
    return [frame for frame in keypad.received if frame.cmd == command]


def test_is_a_driver() -> None:
    driver: Driver = KeypadLineDriver("/dev/null", 9600, {3: "kp-03", 1: "kp-01"})
    assert driver.device_id == "kp-01"
    assert KeypadLineDriver("/dev/null", 9600, {1: "kp-01"}, line_id="line-a").device_id == "line-a"


@pytest.mark.parametrize(
    ("keypads", "baud", "message"),
    [
        ({}, 9600, "no keypad"),
        ({0: "kp-00"}, 9600, "address 0"),
        ({255: "kp-ff"}, 9600, "address 255"),
        ({1: "kp", 2: "kp"}, 9600, "two addresses"),
        ({1: "kp"}, 0, "baud"),
    ],
)
def test_rejects_bad_configuration(keypads: dict[int, str], baud: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeypadLineDriver("/dev/ttyUSB0", baud, keypads)


async def test_ping_pong_marks_online(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    assert keypad.pings >= 1
    info = online.keypads[0]
    assert (info.device_id, info.address, info.online) == ("kp-01", 1, True)
    assert info.firmware == "HKP-SIM 1.0"
    assert sink.of(DeviceOnline) == [DeviceOnline("kp-01", detail=f"keypad at address 1 on {online.port}")]
    # The PONG is a frame like any other: the hub acks it.
    await eventually(lambda: any(ack.cmd == Command.PONG for ack in keypad.acks_received))


async def test_prompt_cancel_show_are_acked(online: KeypadLineDriver, keypad: SimulatedKeypad) -> None:
    await online.prompt("kp-01", 42, 60, "07号窗口 张三")
    assert keypad.prompts == [Prompt(42, 60, "07号窗口 张三")]
    assert keypad.active_prompt == Prompt(42, 60, "07号窗口 张三")
    assert online.keypads[0].prompt_session == 42
    await online.cancel("kp-01", 42)
    assert keypad.cancels == [42]
    assert keypad.active_prompt is None
    assert online.keypads[0].prompt_session is None
    await online.show("kp-01", "请到 3 号窗口")
    assert keypad.shows == ["请到 3 号窗口"]
    await online.ping("kp-01")


async def test_long_text_is_cut_to_fit(online: KeypadLineDriver, keypad: SimulatedKeypad) -> None:
    await online.prompt("kp-01", 1, 30, "张" * 100)
    assert keypad.prompts[-1].text == "张" * 78  # 234 of the 235 bytes a PROMPT leaves for text


async def test_bad_arguments(online: KeypadLineDriver) -> None:
    with pytest.raises(ValueError, match="no keypad 'kp-99'"):
        await online.prompt("kp-99", 1, 30, "x")
    with pytest.raises(ValueError, match="session"):
        await online.prompt("kp-01", 0, 30, "x")
    with pytest.raises(ValueError, match="timeout_s"):
        await online.prompt("kp-01", 1, 256, "x")
    with pytest.raises(ValueError, match="session"):
        await online.cancel("kp-01", 2**32)


async def test_command_retried_then_fails(online: KeypadLineDriver, keypad: SimulatedKeypad) -> None:
    keypad.silent = True
    with pytest.raises(KeypadCommandError) as caught:
        await online.prompt("kp-01", 42, 60, "07号窗口")
    assert str(caught.value) == "keypad kp-01 did not answer PROMPT after 3 tries"
    assert (caught.value.device_id, caught.value.command) == ("kp-01", "PROMPT")
    sent = received(keypad, Command.PROMPT)
    assert len(sent) == 3
    assert len({frame.seq for frame in sent}) == 1  # a retransmission keeps its SEQ
    assert online.keypads[0].prompt_session is None


async def test_refusal_and_busy(online: KeypadLineDriver, keypad: SimulatedKeypad) -> None:
    keypad.nak_next = [NakCode.UNKNOWN_COMMAND]
    with pytest.raises(KeypadCommandError) as caught:
        await online.show("kp-01", "x")
    assert str(caught.value) == "keypad kp-01 refused SHOW: unknown command"
    assert caught.value.nak_code == NakCode.UNKNOWN_COMMAND
    keypad.nak_next = [NakCode.BUSY, NakCode.BAD_CRC]
    await online.show("kp-01", "y")
    assert len(received(keypad, Command.SHOW)) == 4
    assert keypad.shows == ["y"]
    keypad.nak_next = [NakCode.BUSY] * 3
    with pytest.raises(KeypadCommandError, match=r"after 3 tries \(last answer: NAK, busy\)"):
        await online.show("kp-01", "z")


async def test_commands_fail_when_not_running(driver: KeypadLineDriver) -> None:
    with pytest.raises(KeypadCommandError) as caught:
        await driver.prompt("kp-01", 1, 30, "x")
    assert str(caught.value) == f"keypad kp-01 offline: serial port {driver.port} is not open"


async def test_run_twice_is_refused(online: KeypadLineDriver, sink: RecordingSink) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await online.run(sink)


async def test_key_retransmits_are_acked_each_time(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    await online.prompt("kp-01", 42, 60, "07号窗口")
    keypad.drop_acks = 4
    press = keypad.press(2, ("R1", "R2"))
    assert await press.wait(5.0)
    assert press.sends == 5
    assert keypad.acks_ignored == 4
    assert len(key_acks(keypad)) == 5
    assert sink.outcomes() == [Outcome.STORED] + [Outcome.DUPLICATE] * 4
    event = sink.submits[0][0]
    assert event == KeyPressed(
        "kp-01",
        session=42,
        level=2,
        reasons=("R1", "R2"),
        seq=press.frame.seq,
    )
    # The hub, not the driver, decides what a repeat is: a prompted rating once per session and level.
    assert {rating_dedup(e) for e, _ in sink.submits} == {DedupKey("kp-01", "session-42-level-2", None)}
    assert online.keypads[0].prompt_session is None  # the rating ends the prompt


async def test_failed_submit_is_not_acked(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    sink.script = [Outcome.FAILED, Outcome.FAILED]
    press = keypad.press(4, session=9)
    assert await press.wait(5.0)
    assert press.sends == 3
    assert sink.outcomes() == [Outcome.FAILED, Outcome.FAILED, Outcome.STORED]
    assert len(key_acks(keypad)) == 1


async def test_rejected_key_is_naked(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    sink.script = [Outcome.REJECTED]
    press = keypad.press(4, session=9)
    assert not await press.wait(5.0)
    assert press.refused == NakCode.BAD_PAYLOAD
    assert press.sends == 1
    assert key_acks(keypad) == []


async def test_retransmit_during_pending_submit_is_coalesced(
    driver: KeypadLineDriver, keypad: SimulatedKeypad
) -> None:
    gate = asyncio.Event()
    sink = RecordingSink(gate=gate)
    keypad.retransmit_interval_s = 0.05
    async with running(driver, sink):
        await eventually(lambda: driver.keypads[0].online)
        press = keypad.press(1, ("R8",), session=5)
        await eventually(lambda: press.sends >= 4)
        assert sink.calls == 1
        gate.set()
        assert await press.wait(5.0)
        # Every copy received while pending is acked. The simulator's press ends at the first ack,
        # so wait for the rest before the line closes (under load they were still on the way).
        await eventually(lambda: len(key_acks(keypad)) >= 4)
    assert sink.max_concurrent == 1
    assert sink.outcomes().count(Outcome.STORED) == 1


async def test_free_rating_dedups_by_seq_within_a_window(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    first = keypad.free_rating(5)
    assert await first.wait(5.0)
    second = keypad.free_rating(5)
    assert await second.wait(5.0)
    events = [event for event, _ in sink.submits]
    assert [e.session for e in events] == [0, 0]
    assert [e.seq for e in events] == [first.frame.seq, second.frame.seq]
    # The hub decides: a free rating repeats only with the same SEQ, and only within the window.
    assert [rating_dedup(e) for e in events] == [
        DedupKey("kp-01", f"free-seq-{first.frame.seq}", FREE_RATING_DEDUP_WINDOW_S),
        DedupKey("kp-01", f"free-seq-{second.frame.seq}", FREE_RATING_DEDUP_WINDOW_S),
    ]
    assert sink.outcomes() == [Outcome.STORED, Outcome.STORED]


async def test_two_keypads_on_one_port(port_path: Path) -> None:
    kp1 = SimulatedKeypad(1, retransmit_interval_s=0.1)
    kp2 = SimulatedKeypad(2, retransmit_interval_s=0.1, firmware="HKP-SIM 2.0")
    sink = RecordingSink()
    async with SimulatedLine(port_path, [kp1, kp2]) as line:
        driver = KeypadLineDriver(line.path, 9600, {1: "kp-01", 2: "kp-02"}, timings=FAST)
        async with running(driver, sink):
            await eventually(lambda: all(info.firmware for info in driver.keypads))
            assert [info.firmware for info in driver.keypads] == ["HKP-SIM 1.0", "HKP-SIM 2.0"]
            await driver.prompt("kp-01", 101, 60, "01")
            await driver.prompt("kp-02", 202, 60, "02")
            assert [p.session for p in kp1.prompts] == [101]
            assert [p.session for p in kp2.prompts] == [202]
            presses = [kp1.press(5), kp2.press(1, ("R2",))]
            assert all([await p.wait(5.0) for p in presses])
    got = {(e.device_id, e.session, e.level, e.reasons) for e, _ in sink.submits}
    assert got == {("kp-01", 101, 5, ()), ("kp-02", 202, 1, ("R2",))}
    assert {e.device_id for e in sink.of(DeviceOnline)} == {"kp-01", "kp-02"}


async def test_offline_after_silence_and_back(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    keypad.silent = True
    await eventually(lambda: sink.of(DeviceOffline), timeout_s=3.0)
    assert sink.of(DeviceOffline) == [
        DeviceOffline("kp-01", reason=f"no frame from keypad kp-01 (address 1 on {online.port}) for 1 s")
    ]
    assert online.keypads[0].online is False
    with pytest.raises(KeypadCommandError) as caught:
        await online.show("kp-01", "x")
    assert str(caught.value) == "keypad kp-01 offline: did not answer SHOW after 3 tries"
    keypad.silent = False
    await eventually(lambda: len(sink.of(DeviceOnline)) == 2, timeout_s=3.0)
    assert online.keypads[0].online is True
    assert len(sink.of(DeviceOffline)) == 1


async def test_status_flags_report_faults_on_change(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    keypad.send_status(0)
    keypad.send_status(0b101)
    keypad.send_status(0b101)
    await eventually(lambda: sum(a.cmd == Command.STATUS for a in keypad.acks_received) == 3)
    keypad.send_status(0)
    await eventually(lambda: len(sink.of(DeviceFault)) == 2)
    assert sink.of(DeviceFault) == [
        DeviceFault("kp-01", faults=("display_fault", "tamper")),
        DeviceFault("kp-01", faults=()),
    ]
    assert online.keypads[0].faults == ()


async def test_status_heartbeat_keeps_keypad_online(port_path: Path) -> None:
    keypad = SimulatedKeypad(1, status_interval_s=0.1)
    sink = RecordingSink()
    async with SimulatedLine(port_path, [keypad]) as line:
        timings = KeypadTimings(ping_interval_s=60.0, offline_after_s=0.5, ack_timeout_s=0.1)
        driver = KeypadLineDriver(line.path, 9600, {1: "kp-01"}, timings=timings)
        async with running(driver, sink):
            await eventually(lambda: driver.keypads[0].online)
            await asyncio.sleep(1.0)
            assert driver.keypads[0].online
    assert sink.of(DeviceOffline) == []


async def test_unplug_and_replug_mid_prompt(
    online: KeypadLineDriver, keypad: SimulatedKeypad, line: SimulatedLine, sink: RecordingSink
) -> None:
    await online.prompt("kp-01", 77, 60, "07号窗口")
    pings = keypad.pings
    line.unplug()
    await eventually(lambda: sink.of(DeviceOffline))
    offline = sink.of(DeviceOffline)
    assert len(offline) == 1
    assert offline[0].reason.startswith(f"serial port {online.port} lost: ")
    assert not online.is_open
    with pytest.raises(KeypadCommandError, match="keypad kp-01 offline: serial port"):
        await online.show("kp-01", "x")
    await asyncio.sleep(0.3)  # a few failed reopen attempts while the adapter is out
    assert len(sink.of(DeviceOffline)) == 1
    line.replug()
    await eventually(lambda: len(keypad.prompts) == 2, timeout_s=5.0)
    assert keypad.pings > pings
    resent = keypad.prompts[-1]
    assert (resent.session, resent.text) == (77, "07号窗口")
    assert 55 <= resent.timeout_s <= 60  # the time the prompt has left
    assert len(sink.of(DeviceOnline)) == 2
    press = keypad.press(3)
    assert await press.wait(5.0)
    assert sink.submits[-1][0].session == 77
    assert online.keypads[0].prompt_session is None


async def test_expired_prompt_is_not_resent(
    online: KeypadLineDriver, keypad: SimulatedKeypad, line: SimulatedLine
) -> None:
    await online.prompt("kp-01", 78, 1, "x")
    line.unplug()
    await asyncio.sleep(1.1)
    pings = keypad.pings
    line.replug()
    await eventually(lambda: keypad.pings > pings, timeout_s=5.0)
    await asyncio.sleep(0.2)
    assert [p.session for p in keypad.prompts] == [78]
    assert online.keypads[0].prompt_session is None


async def test_port_missing_at_start(port_path: Path) -> None:
    sink = RecordingSink()
    driver = KeypadLineDriver(str(port_path), 9600, {1: "kp-01"}, timings=FAST)
    async with running(driver, sink):
        await eventually(lambda: sink.of(DeviceOffline))
        await asyncio.sleep(0.3)
        [offline] = sink.of(DeviceOffline)
        assert offline.reason == (
            f"cannot open serial port {port_path}: no such device "
            "(is the adapter plugged in? check `port` in the config)"
        )
        async with SimulatedLine(port_path, [SimulatedKeypad(1)]):
            await eventually(lambda: sink.of(DeviceOnline), timeout_s=5.0)


async def test_noise_and_bad_crc_are_counted(
    online: KeypadLineDriver, keypad: SimulatedKeypad, line: SimulatedLine, sink: RecordingSink
) -> None:
    line.inject(b"\x00\xff\x55\xaa")
    await eventually(lambda: sink.of(FrameDropped))
    assert sink.of(FrameDropped) == [FrameDropped("kp-01", reason="noise")]
    keypad.corrupt_next = 1
    press = keypad.press(5, session=3)
    assert await press.wait(5.0)
    assert press.sends == 2
    assert FrameDropped("kp-01", reason="bad_crc") in sink.of(FrameDropped)
    keypad.noise_bytes = 12
    for level in (1, 2, 3):
        assert await keypad.press(level, session=10 + level).wait(5.0)
    assert {e.session for e, _ in sink.submits} >= {11, 12, 13}
    reasons = {e.reason for e in sink.of(FrameDropped)}
    assert reasons <= {"noise", "bad_crc", "bad_len", "bad_etx", "timeout"}


async def test_bad_frames_from_the_line(
    online: KeypadLineDriver, keypad: SimulatedKeypad, line: SimulatedLine, sink: RecordingSink
) -> None:
    bad_key = Frame(1, 50, Command.KEY, bytes((0, 0, 0, 1, 9, 0)))  # level 9
    line.inject(encode_frame(bad_key))
    line.inject(encode_frame(Frame(1, 51, 0x42)))
    line.inject(encode_frame(make_frame(9, 1, Status(0))))
    await eventually(lambda: len(sink.of(FrameDropped)) == 3)
    assert sink.of(FrameDropped) == [
        FrameDropped("kp-01", reason="bad_payload"),
        FrameDropped("kp-01", reason="unknown_command"),
        FrameDropped("kp-01", reason="unknown_address"),
    ]
    await eventually(lambda: len(keypad.naks_received) == 2)
    assert [(n.seq, n.cmd, n.code) for n in keypad.naks_received] == [
        (50, Command.KEY, NakCode.BAD_PAYLOAD),
        (51, 0x42, NakCode.UNKNOWN_COMMAND),
    ]
    assert sink.submits == []


async def test_key_payload_round_trip_through_simulator(
    online: KeypadLineDriver, keypad: SimulatedKeypad, sink: RecordingSink
) -> None:
    press = keypad.press(1, ("R1", "R3", "R5", "R8"), session=2**32 - 1)
    assert await press.wait(5.0)
    assert press.key == Key(2**32 - 1, 1, ("R1", "R3", "R5", "R8"))
    event = sink.submits[0][0]
    assert (event.session, event.level, event.reasons) == (2**32 - 1, 1, ("R1", "R3", "R5", "R8"))


async def test_port_held_by_another_program(line: SimulatedLine) -> None:
    holder = serial.Serial(line.path, 9600, exclusive=True)
    try:
        sink = RecordingSink()
        driver = KeypadLineDriver(line.path, 9600, {1: "kp-01"}, timings=FAST)
        async with running(driver, sink):
            await eventually(lambda: sink.of(DeviceOffline))
        assert sink.of(DeviceOffline)[0].reason == (
            f"cannot open serial port {line.path}: port in use by another program (exclusive lock failed)"
        )
    finally:
        holder.close()


async def test_a_line_that_echoes_what_the_hub_sends(
    port_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two-wire RS-485: the hub hears its own PINGs, PROMPTs and ACKs; none passes for the keypad's."""
    caplog.set_level(logging.DEBUG, logger="drivers.keypad.driver")
    keypad = SimulatedKeypad(1, retransmit_interval_s=0.2, seed=7)
    sink = RecordingSink()
    async with SimulatedLine(port_path, [keypad], echo=True) as line:
        driver = KeypadLineDriver(line.path, 9600, {1: "kp-01"}, timings=FAST)
        async with running(driver, sink):
            await eventually(lambda: driver.keypads[0].firmware is not None)
            await driver.prompt("kp-01", 42, 60, "07号窗口")
            press = keypad.press(2, ("R1",))
            assert await press.wait(5.0)
            assert press.sends == 1, "acked the first time"
            assert sink.outcomes() == [Outcome.STORED]
            assert sink.of(FrameDropped) == [], "its own frames are not counted as bad ones"
            keypad.silent = True
            await eventually(lambda: sink.of(DeviceOffline), timeout_s=3.0)
            assert driver.keypads[0].online is False, "its own PINGs coming back keep no keypad online"
    assert "ignoring PROMPT to address 1 heard on the line" in caplog.text, "the echo did reach the driver"
