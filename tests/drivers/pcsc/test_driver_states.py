"""The driver's reader/card bookkeeping, fed by a stand-in for pyscard's monitors (no pcscd).

Only cards the driver must not talk to are used here, so no card connection is ever attempted;
reading cards is covered against the real pcscd in `test_live.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from drivers.base import DeviceEvent, DeviceOffline, DeviceOnline
from drivers.pcsc import CardInserted, CardRemoved, PcscDriver, ReaderAttached, ReaderDetached
from drivers.pcsc._pcsc import (
    CardsCallback,
    MonitorHub,
    PcscUnavailableError,
    Subscription,
    _CardObserver,
    _ReaderObserver,
)
from tests.drivers.pcsc.fake_card import EMV_ATR
from tests.drivers.pcsc.helpers import RecordingIdentifier, RecordingSink

DEVICE = "pcsc-01"
READER_A = "ACS ACR39U ICC Reader 00 00"
READER_B = "ACS ACR39U ICC Reader 01 00"
OTHER_ATR = bytes.fromhex("3B6800000073C84013009001")


@dataclass
class _Subscriber:
    on_readers: Callable[[], None]
    on_cards: CardsCallback


class FakeHub(MonitorHub):
    """Monitors whose reader list, card events and failures the test controls."""

    def __init__(self) -> None:
        super().__init__()
        self.reader_list: tuple[str, ...] = ()
        self.down: str | None = None
        self.broken: str | None = None
        self.subscriber: _Subscriber | None = None
        self.generation = 0
        self.unsubscribed: list[bool] = []

    @property
    def readers(self) -> tuple[str, ...]:
        """The list the test set."""
        return self.reader_list

    def subscribe(self, on_readers: Callable[[], None], on_cards: CardsCallback) -> Subscription:
        """Fail while `down`, else keep the callbacks for the test to call."""
        if self.down is not None:
            raise PcscUnavailableError(self.down)
        self.generation += 1
        self.broken = None
        self.subscriber = _Subscriber(on_readers, on_cards)
        return Subscription(self.generation, _ReaderObserver(on_readers), _CardObserver(on_cards))

    def unsubscribe(self, subscription: Subscription, *, broken: bool) -> None:
        """Remember how the driver let go."""
        self.unsubscribed.append(broken)
        self.subscriber = None

    def problem(self, subscription: Subscription) -> str | None:
        """What the test declared broken."""
        return self.broken

    def set_readers(self, *names: str) -> None:
        """Change the reader list and tell the driver, as the reader monitor would."""
        self.reader_list = names
        assert self.subscriber is not None
        self.subscriber.on_readers()

    def cards(self, added: list[tuple[str, bytes]], removed: list[tuple[str, bytes]]) -> None:
        """Report card changes, as the card monitor would."""
        assert self.subscriber is not None
        self.subscriber.on_cards(added, removed)


@dataclass
class Rig:
    hub: FakeHub
    sink: RecordingSink


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    hub = FakeHub()
    hub.reader_list = (READER_A,)
    sink = RecordingSink()
    driver = PcscDriver(
        DEVICE,
        "acr39u",
        RecordingIdentifier(),
        monitors=hub,
        retry_min_s=0.01,
        retry_max_s=0.05,
        health_interval_s=0.02,
    )
    task = asyncio.create_task(driver.run(sink))
    await sink.wait_for(DeviceOnline)
    yield Rig(hub, sink)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def since(sink: RecordingSink, mark: int) -> list[DeviceEvent]:
    """Events after `mark`, without the online/offline status ones."""
    return [e for e in sink.events[mark:] if not isinstance(e, (DeviceOnline, DeviceOffline))]


async def test_start_reports_readers_then_online(rig: Rig) -> None:
    assert rig.sink.events[:2] == [
        ReaderAttached(DEVICE, READER_A),
        DeviceOnline(DEVICE, f"PC/SC reader(s): {READER_A}"),
    ]


async def test_unplugged_reader_takes_its_card_with_it(rig: Rig) -> None:
    rig.hub.cards([(READER_A, EMV_ATR)], [])
    await rig.sink.wait_for(CardInserted)
    mark = len(rig.sink.events)
    rig.hub.set_readers()
    offline = await rig.sink.wait_for(DeviceOffline, after=mark)
    assert "no PC/SC reader matching 'acr39u' is attached (pcscd sees: none)" in offline.reason
    assert since(rig.sink, mark) == [CardRemoved(DEVICE, READER_A), ReaderDetached(DEVICE, READER_A)]


async def test_card_swap_in_one_notification(rig: Rig) -> None:
    rig.hub.cards([(READER_A, EMV_ATR)], [])
    await rig.sink.wait_for(CardInserted)
    mark = len(rig.sink.events)
    rig.hub.cards([(READER_A, OTHER_ATR)], [(READER_A, EMV_ATR)])
    await rig.sink.wait_for(CardInserted, after=mark)
    assert since(rig.sink, mark) == [
        CardRemoved(DEVICE, READER_A),
        CardInserted(DEVICE, READER_A, OTHER_ATR.hex().upper()),
    ]


async def test_repeated_and_foreign_card_news_is_ignored(rig: Rig) -> None:
    rig.hub.cards([(READER_A, EMV_ATR)], [])
    await rig.sink.wait_for(CardInserted)
    mark = len(rig.sink.events)
    rig.hub.cards([(READER_A, EMV_ATR), ("Other Vendor Reader 00 00", EMV_ATR)], [])
    rig.hub.cards([], [(READER_A, OTHER_ATR)])  # not the card we know
    rig.hub.cards([], [(READER_A, EMV_ATR)])
    await rig.sink.wait_for(CardRemoved, after=mark)
    assert since(rig.sink, mark) == [CardRemoved(DEVICE, READER_A)]


async def test_card_in_a_reader_not_yet_listed_attaches_the_reader_first(rig: Rig) -> None:
    mark = len(rig.sink.events)
    rig.hub.cards([(READER_B, EMV_ATR)], [])
    await rig.sink.wait_for(CardInserted, after=mark)
    assert since(rig.sink, mark) == [
        ReaderAttached(DEVICE, READER_B),
        CardInserted(DEVICE, READER_B, EMV_ATR.hex().upper()),
    ]


async def test_lost_pcscd_forgets_everything_and_comes_back(rig: Rig) -> None:
    rig.hub.cards([(READER_A, EMV_ATR)], [])
    await rig.sink.wait_for(CardInserted)
    mark = len(rig.sink.events)
    rig.hub.down = "pcscd is not running (test)"
    rig.hub.broken = "lost the connection to pcscd (test)"
    await rig.sink.wait_for(DeviceOffline, lambda e: e.reason == "pcscd is not running (test)", after=mark)
    assert since(rig.sink, mark) == [CardRemoved(DEVICE, READER_A), ReaderDetached(DEVICE, READER_A)]
    assert [e.reason for e in rig.sink.events[mark:] if isinstance(e, DeviceOffline)] == [
        "lost the connection to pcscd (test)",
        "pcscd is not running (test)",
    ]
    assert rig.hub.unsubscribed == [True]
    mark = len(rig.sink.events)
    rig.hub.down = None
    await rig.sink.wait_for(DeviceOnline, after=mark)
    assert since(rig.sink, mark) == [ReaderAttached(DEVICE, READER_A)]
