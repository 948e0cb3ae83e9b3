"""The SAM ID-card driver against a simulated reader on a real pty."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
from pathlib import Path

import pytest

from drivers.base import DeviceOffline, DeviceOnline, FrameDropped, Outcome
from drivers.idcard.codec import Command, Status
from drivers.idcard.driver import CardRead, IdCardReaderDriver
from drivers.idcard.simulator import (
    Fault,
    SimCard,
    SimulatedSamReader,
    demo_cards,
    run_simulated_reader,
)
from drivers.idcard.textblock import CardType, Sex
from hub.privacy.sealing import NodeIdentifier, SealedIdentity, citizen_ref, derive_seal_key
from tests.drivers.idcard.conftest import SECRET, DriverFactory, RecordingSink, wait_until

RESIDENT, PERMIT, FOREIGN_OLD, FOREIGN_2023 = demo_cards()


def reads(sink: RecordingSink) -> list[CardRead]:
    return sink.of(CardRead)


async def wait_for_reads(sink: RecordingSink, count: int) -> None:
    """Wait until `count` cards have been reported."""
    await sink.wait_for(lambda: len(reads(sink)) >= count)


async def polls_pass(reader: SimulatedSamReader, count: int) -> None:
    """Wait until the driver has sent `count` more find-card commands."""
    target = reader.commands[Command.FIND_CARD] + count
    await wait_until(lambda: reader.commands[Command.FIND_CARD] >= target)


async def test_card_placed_gives_one_card_read(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOnline)))
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    event = reads(sink)[0]
    number = RESIDENT.fields["id_number"]
    assert event.device_id == "idcard-01"
    assert event.card_type is CardType.RESIDENT
    assert json.dumps([event.card_type, event.sex]) == '["resident", "male"]'
    assert event.identity.masked == number[:6] + "*" * 8 + number[-4:]
    assert event.identity.ref == citizen_ref(number, SECRET)
    assert event.identity.sealed is None
    assert (event.sex, event.birth_year, event.valid_until) == (Sex.MALE, 2000, "2040-01-01")
    assert "SAM ok" in sink.of(DeviceOnline)[0].detail
    assert sink.events.index(sink.of(DeviceOnline)[0]) < sink.events.index(event)


async def test_card_held_is_reported_once(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    await polls_pass(reader, 6)
    assert len(reads(sink)) == 1
    assert reader.commands[Command.READ_BASIC] == 1


async def test_card_removed_and_placed_again_is_reported_again(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    reader.remove_card()
    await polls_pass(reader, 3)
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 2)
    assert reads(sink)[0].identity == reads(sink)[1].identity


async def test_every_card_type_and_no_expiry(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    no_expiry = SimCard("resident", {**RESIDENT.fields, "valid_until": "长期"})
    cards = [PERMIT, FOREIGN_OLD, FOREIGN_2023, no_expiry]
    start_driver()
    for count, card in enumerate(cards, start=1):
        reader.place_card(card)
        await wait_for_reads(sink, count)
        reader.remove_card()
        await polls_pass(reader, 3)
    got = [(e.card_type, e.sex, e.birth_year, e.valid_until) for e in reads(sink)]
    assert got == [
        (CardType.HK_MO_TW_PERMIT, Sex.FEMALE, 1990, "2026-03-03"),
        (CardType.FOREIGN_PERMANENT, Sex.MALE, 1985, "2027-01-01"),
        (CardType.FOREIGN_PERMANENT, Sex.FEMALE, 1980, "2033-08-07"),
        (CardType.RESIDENT, Sex.MALE, 2000, "长期"),
    ]
    assert reads(sink)[1].identity.masked == "USA110*****0112"


async def test_reader_unplugged_and_back(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    reader.unplug()
    await sink.wait_for(lambda: bool(sink.of(DeviceOffline)))
    assert "unplugged" in sink.of(DeviceOffline)[0].reason
    await asyncio.sleep(0.3)  # the driver fails to reopen the missing port a few times
    reader.replug()
    await sink.wait_for(lambda: len(sink.of(DeviceOnline)) == 2)
    # The same card is still on the reader: it is checked again but not reported twice.
    await wait_until(lambda: reader.commands[Command.READ_BASIC] >= 2)
    await polls_pass(reader, 2)
    assert len(reads(sink)) == 1
    reader.remove_card()
    await polls_pass(reader, 3)
    reader.place_card(PERMIT)
    await sink.wait_for(lambda: len(reads(sink)) == 2)
    kinds = [type(e).__name__ for e in sink.events if not isinstance(e, FrameDropped)]
    assert kinds == ["DeviceOnline", "CardRead", "DeviceOffline", "DeviceOnline", "CardRead"]


async def test_card_swapped_while_unplugged_is_reported(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    reader.unplug()
    await sink.wait_for(lambda: bool(sink.of(DeviceOffline)))
    reader.place_card(FOREIGN_2023)
    reader.replug()
    await sink.wait_for(lambda: len(reads(sink)) == 2)
    assert reads(sink)[1].card_type is CardType.FOREIGN_PERMANENT


async def test_reader_missing_at_start_then_plugged_in(
    link: Path, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOffline)))
    assert "cannot use port" in sink.of(DeviceOffline)[0].reason
    async with SimulatedSamReader(link) as reader:
        await sink.wait_for(lambda: bool(sink.of(DeviceOnline)), timeout=5)
        reader.place_card(RESIDENT)
        await sink.wait_for(lambda: len(reads(sink)) == 1)
    assert len(sink.of(DeviceOffline)) >= 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.BAD_CHECKSUM, "bad_checksum"),
        (Fault.TRUNCATE, "truncated"),
        (Fault.NOISE_BEFORE, "noise"),
        (Fault.OVERSIZED, "oversized"),
        (Fault.BAD_LENGTH, "bad_length"),
    ],
)
async def test_bad_frames_are_dropped_and_counted(
    reader: SimulatedSamReader,
    start_driver: DriverFactory,
    sink: RecordingSink,
    fault: Fault,
    reason: str,
) -> None:
    driver = start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOnline)))
    reader.inject(fault)
    await sink.wait_for(lambda: any(e.reason == reason for e in sink.of(FrameDropped)))
    assert driver.drops[reason] >= 1
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    assert not sink.of(DeviceOffline)


async def test_unanswered_commands_do_not_stop_reads(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOnline)))
    reader.inject(Fault.SILENT, 2)
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)
    assert not sink.of(DeviceOffline)


async def test_silent_reader_goes_offline_and_recovers(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOnline)))
    reader.inject(Fault.SILENT, 1000)
    await sink.wait_for(lambda: bool(sink.of(DeviceOffline)), timeout=8)
    assert "stopped answering" in sink.of(DeviceOffline)[0].reason
    reader.clear_faults()
    await sink.wait_for(lambda: len(sink.of(DeviceOnline)) == 2, timeout=8)
    reader.place_card(PERMIT)
    await sink.wait_for(lambda: len(reads(sink)) == 1)


async def test_sam_fault_on_open_keeps_device_offline_until_fixed(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    reader.sam_status = Status.SAM_SELF_TEST_FAILED
    start_driver()
    await sink.wait_for(lambda: bool(sink.of(DeviceOffline)))
    assert "self-test failed" in sink.of(DeviceOffline)[0].reason
    assert not sink.of(DeviceOnline)
    reader.sam_status = Status.SUCCESS
    await sink.wait_for(lambda: bool(sink.of(DeviceOnline)))


async def test_failed_store_means_the_card_is_read_again(
    reader: SimulatedSamReader, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    sink.outcome = Outcome.FAILED
    start_driver()
    reader.place_card(RESIDENT)
    await sink.wait_for(lambda: len(reads(sink)) == 2)
    sink.outcome = Outcome.STORED
    await sink.wait_for(lambda: len(reads(sink)) == 3)
    await polls_pass(reader, 4)
    assert len(reads(sink)) == 3


async def test_polls_no_faster_than_300_ms(reader: SimulatedSamReader, start_driver: DriverFactory) -> None:
    start_driver()
    await polls_pass(reader, 5)
    times = [at for at, command in reader.history if command is Command.FIND_CARD]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps
    assert min(gaps) >= 0.299


def test_poll_interval_floor_and_options_are_checked() -> None:
    identifier = NodeIdentifier(SECRET)
    with pytest.raises(ValueError, match="300 ms"):
        IdCardReaderDriver("idc", "/dev/null", identifier=identifier, poll_interval_s=0.1)
    with pytest.raises(ValueError, match="absent_polls"):
        IdCardReaderDriver("idc", "/dev/null", identifier=identifier, absent_polls=0)
    with pytest.raises(ValueError, match="reconnect"):
        IdCardReaderDriver("idc", "/dev/null", identifier=identifier, reconnect_min_s=0)


async def test_run_simulated_reader_serves_the_demo_cards(
    link: Path, start_driver: DriverFactory, sink: RecordingSink
) -> None:
    ready = asyncio.Event()
    simulation = asyncio.create_task(
        run_simulated_reader(link, dwell_s=0.8, gap_s=0.8, placements=2, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 5)
    start_driver()
    await sink.wait_for(lambda: len(reads(sink)) == 2, timeout=10)
    await asyncio.wait_for(simulation, 5)
    assert [e.card_type for e in reads(sink)] == [CardType.RESIDENT, CardType.HK_MO_TW_PERMIT]


def _card_secrets(card: SimCard) -> list[str]:
    """Everything of a card that must never appear in events or logs."""
    fields = card.fields
    values = [fields["id_number"], fields["id_number"].lower(), fields["name"]]
    values += [fields[key] for key in ("address", "english_name") if key in fields]
    photo = card.photo
    values += [photo.hex(), photo[:16].hex(), repr(photo[:16])[2:-1], photo[:16].hex(" ")]
    return values


async def test_privacy_no_personal_data_in_events_or_logs(
    reader: SimulatedSamReader,
    start_driver: DriverFactory,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    start_driver(identifier=NodeIdentifier(SECRET, identity_mode="encrypted"))
    for count, card in enumerate(demo_cards(), start=1):
        reader.place_card(card)
        await wait_for_reads(sink, count)
        reader.remove_card()
        await polls_pass(reader, 3)
    reader.inject(Fault.BAD_CHECKSUM)
    reader.unplug()
    reader.replug()
    await sink.wait_for(lambda: len(sink.of(DeviceOnline)) == 2)

    texts = [caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(event) for event in sink.events]
    texts += [str(event) for event in sink.events]
    texts += [repr(dataclasses.asdict(event)) for event in sink.events]
    corpus = "\n".join(texts)
    for card in demo_cards():
        for secret in _card_secrets(card):
            assert secret not in corpus
    for event in sink.events:
        for field in dataclasses.fields(event):
            assert not isinstance(getattr(event, field.name), bytes | bytearray)
    # The real-name fields exist only sealed, and open with the node's key.
    first = reads(sink)[0]
    assert first.identity.sealed is not None
    opened = SealedIdentity.unseal(first.identity.sealed, derive_seal_key(SECRET))
    assert opened.cert_key_gov == RESIDENT.fields["id_number"]
    assert opened.user_name == RESIDENT.fields["name"]
