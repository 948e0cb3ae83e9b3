"""The PC/SC driver against a real pcscd, vpcd's virtual readers and our fake cards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.base import (
    CitizenIdentifier,
    DeviceOffline,
    DeviceOnline,
    FrameDropped,
)
from drivers.pcsc import (
    CardIdentified,
    CardInserted,
    CardRemoved,
    PcscDriver,
    ReaderAttached,
    ReaderDetached,
)
from drivers.pcsc.apdu import GET_UID, select_aid
from drivers.pcsc.ssc import SSSE_AID
from hub.privacy.sealing import NodeIdentifier
from tests.drivers.pcsc.conftest import Pcscd, VpcdReader
from tests.drivers.pcsc.fake_card import (
    CONTACTLESS_ATR,
    EMV_ATR,
    SSC_ATR,
    ContactlessCard,
    EmvCard,
    FakeCard,
    RefusingCard,
    SocialSecurityCard,
)
from tests.drivers.pcsc.helpers import RecordingSink

pytestmark = pytest.mark.pcsc

DEVICE = "pcsc-07"
TEST_KEY = b"hallhub pcsc test key, 32 bytes!"
ID_NUMBER = "11010519491231002X"  # the GB 11643 example number
NAME = "张测试"

StartDriver = Callable[..., RecordingSink]


@pytest.fixture
async def start_driver(pcscd: Pcscd) -> AsyncIterator[StartDriver]:
    """Start drivers on the test's loop; cancel them at the end."""
    tasks: list[asyncio.Task[None]] = []

    def start(reader_filter: str | None, identifier: CitizenIdentifier | None = None) -> RecordingSink:
        sink = RecordingSink()
        driver = PcscDriver(
            DEVICE,
            reader_filter,
            identifier or NodeIdentifier(TEST_KEY, hmac="sha256"),
            retry_min_s=0.1,
            retry_max_s=0.5,
            health_interval_s=0.2,
        )
        tasks.append(asyncio.create_task(driver.run(sink)))
        return sink

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def inserted(card: FakeCard, reader: VpcdReader) -> AsyncIterator[FakeCard]:
    """Hold the card in the reader for the block."""
    await asyncio.to_thread(card.insert, reader.port)
    try:
        yield card
    finally:
        await asyncio.to_thread(card.remove)


async def test_reader_attached_and_online(start_driver: StartDriver, vpcd_readers: list[VpcdReader]) -> None:
    mine, other = vpcd_readers[0], vpcd_readers[1]
    sink = start_driver(mine.name)
    await sink.wait_for(ReaderAttached, lambda e: e.reader == mine.name)
    online = await sink.wait_for(DeviceOnline)
    assert mine.name in online.detail
    assert [e.reader for e in sink.of(ReaderAttached)] == [mine.name]  # the filter keeps `other` out
    assert other.name not in online.detail

    missing = start_driver("No Such Reader")
    offline = await missing.wait_for(DeviceOffline)
    assert "no PC/SC reader matching 'No Such Reader' is attached" in offline.reason
    assert mine.name in offline.reason  # says what pcscd does see
    assert not missing.of(ReaderAttached)


async def test_card_present_before_the_driver_starts(
    start_driver: StartDriver, vpcd_readers: list[VpcdReader]
) -> None:
    reader = vpcd_readers[0]
    card = ContactlessCard(uid=bytes.fromhex("08AABBCC"))
    async with inserted(card, reader):
        probe = start_driver(reader.name)  # waits until pcscd has seen the card
        await probe.wait_for(CardInserted)
        sink = start_driver(reader.name)
        identified = await sink.wait_for(CardIdentified)
        assert identified.uid == "08AABBCC"
        assert sink.of(CardInserted) == [CardInserted(DEVICE, reader.name, CONTACTLESS_ATR.hex().upper())]
    await sink.wait_for(CardRemoved)


async def test_contactless_card_uid_then_removed(
    start_driver: StartDriver, vpcd_readers: list[VpcdReader]
) -> None:
    mine, other = vpcd_readers[0], vpcd_readers[1]
    sink = start_driver(mine.name)
    other_sink = start_driver(other.name)  # a second driver of the process, on the other reader
    await sink.wait_for(DeviceOnline)
    await other_sink.wait_for(DeviceOnline)
    card = ContactlessCard(uid=bytes.fromhex("04A1B2C3D4E5F6"))
    async with inserted(card, mine):
        event = await sink.wait_for(CardInserted)
        assert event == CardInserted(DEVICE, mine.name, CONTACTLESS_ATR.hex().upper())
        identified = await sink.wait_for(CardIdentified)
        assert identified == CardIdentified(
            DEVICE, reader=mine.name, card_type="contactless", uid="04A1B2C3D4E5F6", identity=None
        )
    await sink.wait_for(CardRemoved, lambda e: e.reader == mine.name)
    assert card.apdus == [GET_UID]
    assert not other_sink.of(CardInserted)
    assert not other_sink.of(CardIdentified)


async def test_social_security_card_gives_masked_number_and_reference(
    start_driver: StartDriver, vpcd_readers: list[VpcdReader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader = vpcd_readers[0]
    sink = start_driver(reader.name, NodeIdentifier(TEST_KEY, hmac="sha256"))
    await sink.wait_for(DeviceOnline)
    card = SocialSecurityCard(ID_NUMBER, NAME)
    async with inserted(card, reader):
        inserted_event = await sink.wait_for(CardInserted)
        identified = await sink.wait_for(CardIdentified)
    await sink.wait_for(CardRemoved)

    assert inserted_event.atr == SSC_ATR.hex().upper()
    assert identified.card_type == "social_security"
    assert identified.uid is None
    assert identified.identity is not None
    assert identified.identity.masked == "110105********002X"
    expected_ref = hmac.new(TEST_KEY, ID_NUMBER.encode(), hashlib.sha256).hexdigest()
    assert identified.identity.ref == expected_ref
    assert identified.identity.sealed is None
    assert card.apdus[0] == select_aid(SSSE_AID)

    texts = [repr(event) for event in sink.events] + [r.getMessage() for r in caplog.records]
    texts.append(caplog.text)
    for secret in (ID_NUMBER, ID_NUMBER[6:14], NAME):
        assert not [text for text in texts if secret in text], f"{secret!r} leaked"


async def test_bank_card_gets_no_apdu(start_driver: StartDriver, vpcd_readers: list[VpcdReader]) -> None:
    reader = vpcd_readers[0]
    sink = start_driver(reader.name)
    await sink.wait_for(DeviceOnline)
    card = EmvCard()
    async with inserted(card, reader):
        event = await sink.wait_for(CardInserted)
        assert event.atr == EMV_ATR.hex().upper()
    # Events are handled in order: once the removal is reported, the insert was fully handled.
    await sink.wait_for(CardRemoved)
    assert card.apdus == []
    assert not sink.of(CardIdentified)
    assert not sink.of(FrameDropped)


async def test_card_with_social_security_atr_but_no_application_gets_one_select(
    start_driver: StartDriver, vpcd_readers: list[VpcdReader]
) -> None:
    reader = vpcd_readers[0]
    sink = start_driver(reader.name)
    await sink.wait_for(DeviceOnline)
    card = RefusingCard(SSC_ATR)
    async with inserted(card, reader):
        dropped = await sink.wait_for(FrameDropped)
    await sink.wait_for(CardRemoved)
    assert dropped.reason == "ssc_no_application"
    assert card.apdus == [select_aid(SSSE_AID)]
    assert not sink.of(CardIdentified)


async def test_pcscd_stopped_then_restarted(
    start_driver: StartDriver, vpcd_readers: list[VpcdReader], pcscd: Pcscd
) -> None:
    if not pcscd.owned:
        pytest.skip("pcscd was already running when the tests started: they cannot restart it")
    reader = vpcd_readers[0]
    sink = start_driver(reader.name)
    await sink.wait_for(DeviceOnline)
    card = ContactlessCard(uid=bytes.fromhex("04010203"))
    async with inserted(card, reader):
        await sink.wait_for(CardIdentified)
        mark = len(sink.events)
        await asyncio.to_thread(pcscd.stop)
        offline = await sink.wait_for(DeviceOffline, after=mark)
    assert "pcscd" in offline.reason
    lost = sink.events[mark:]
    assert CardRemoved(DEVICE, reader.name) in lost
    assert ReaderDetached(DEVICE, reader.name) in lost

    late = start_driver(reader.name)  # a driver started while pcscd is down
    late_offline = await late.wait_for(DeviceOffline)
    assert "pcscd is not running" in late_offline.reason

    mark = len(sink.events)
    await asyncio.to_thread(pcscd.start)
    await sink.wait_for(ReaderAttached, after=mark)
    await sink.wait_for(DeviceOnline, after=mark)
    await late.wait_for(DeviceOnline)
