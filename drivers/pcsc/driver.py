"""PC/SC card readers over pcscd (CONTRACTS.md §4a): readers, cards, UIDs and 社会保障卡.

`PcscDriver(device_id, reader_filter, identifier).run(sink)` reports, through `sink.notify`:
`ReaderAttached`, `ReaderDetached`, `CardInserted` (with the ATR), `CardRemoved`,
`DeviceOnline`/`DeviceOffline` and `FrameDropped` (a card read that failed; `reason` is one of
`read_timeout`, `pcscd_unavailable`, `connect_failed`, `transaction_failed`, `transmit_failed`,
`bad_response`, or for a social security card `ssc_no_application`, `ssc_select_failed`,
`ssc_read_failed`, `ssc_bad_record`, `ssc_bad_card_id`, `ssc_bad_number`);
and through `sink.submit`, `CardIdentified` (a contactless UID, or a social security card's masked
number and keyed reference). `reader_filter` picks this device's readers by a case-insensitive
substring of the PC/SC reader name (None: every reader).

Which cards get APDUs: default-deny
-----------------------------------
The contract forbids any APDU to a bank/EMV card. An EMV card cannot be told apart reliably by its
ATR (EMV leaves the historical bytes to the issuer, and a COS vendor may well give its bank and its
social security cards the same ATR layout), and probing it with a PSE/PPSE SELECT would itself be an
APDU to the payment application. So the driver talks only to cards it recognises from the ATR, before
sending anything (`drivers/pcsc/atr.py`):

1. Contactless cards (the PC/SC Part 3 pseudo-ATR `3B 8n 80 01 ...` a contactless reader makes):
   only `FF CA 00 00 00`, which the reader answers itself from anticollision; it never reaches a
   card application, so a contactless bank card is not touched either.
2. Contact cards whose ATR matches a 社会保障卡 pattern (`DEFAULT_SSC_ATR_PATTERNS`, extendable with
   `ssc_atr_patterns`): SELECT the SSSE application `7378312E73682EC9E7BBE1B1A3D5CF`. A card that
   refuses gets nothing more: one SELECT of an AID that is not a payment application. A card whose
   EF05/01 does not carry the MOHRSS registered id is left before any personal data is read; then
   EF06/08 (number) and EF06/09 (name) are read (`drivers/pcsc/ssc.py`). A 社会保障卡 with a bank
   function also holds a payment application; the driver never selects it, nor the PSE/PPSE.
3. Every other card, and every ATR that does not parse: `CardInserted` only. The driver does not
   even connect to it.

A social security card held to a contactless reader is case 1 (its UID only).

Threads and the event loop
--------------------------
pyscard's `ReaderMonitor` and `CardMonitor` run on their own threads and are shared by every driver
of the process (`drivers/pcsc/_pcsc.py`); their callbacks only post to this driver's queue with
`loop.call_soon_threadsafe`. Card reads run on a worker thread (`asyncio.to_thread`) and are bounded
by `read_timeout_s`. Events are handled one at a time, so a card's `CardIdentified` always comes
between its `CardInserted` and its `CardRemoved`.

Online and offline
------------------
The device is online while pcscd answers and at least one matching reader is attached. When pcscd
is not running or goes away (pyscard raises; the monitors stop), the driver reports every reader
and card as gone, reports `DeviceOffline` with the reason, and reconnects with exponential backoff
and full jitter (`retry_min_s` .. `retry_max_s`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.base import (
    CitizenIdentifier,
    DeviceOffline,
    DeviceOnline,
    EventSink,
    FrameDropped,
    Outcome,
)
from drivers.pcsc._pcsc import (
    CardChannel,
    CardChannelError,
    MonitorHub,
    PcscUnavailableError,
    Subscription,
    shared_hub,
)
from drivers.pcsc.apdu import GET_UID, ApduError
from drivers.pcsc.atr import DEFAULT_SSC_ATR_PATTERNS, AtrPattern, CardClass, classify
from drivers.pcsc.events import (
    CardIdentified,
    CardInserted,
    CardRemoved,
    ReaderAttached,
    ReaderDetached,
)
from drivers.pcsc.ssc import SscReadError, read_identity
from drivers.reopen import open_with_backoff

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DriverContext, DriverFactory

__all__ = ["PcscDriver", "from_config"]

logger = logging.getLogger(__name__)

_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class _ReadersChanged:
    """The reader monitor saw readers come or go; the full list is re-read from the hub."""


@dataclass(frozen=True, slots=True)
class _CardsChanged:
    """The card monitor saw cards come or go: (reader, ATR) pairs."""

    added: tuple[tuple[str, bytes], ...]
    removed: tuple[tuple[str, bytes], ...]


_Item = _ReadersChanged | _CardsChanged


class _Bridge:
    """Hands monitor-thread news to the event loop without ever blocking the monitor thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item]) -> None:
        self._loop = loop
        self._queue = queue

    def readers_changed(self) -> None:
        """Called on a monitor thread."""
        self._post(_ReadersChanged())

    def cards_changed(self, added: list[tuple[str, bytes]], removed: list[tuple[str, bytes]]) -> None:
        """Called on a monitor thread."""
        self._post(_CardsChanged(tuple(added), tuple(removed)))

    def _post(self, item: _Item) -> None:
        """Schedule the put on the loop; a closed loop means the driver is gone."""
        try:
            self._loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:
            logger.debug("PC/SC monitor event after the event loop closed: ignored")

    def _put(self, item: _Item) -> None:
        """Runs on the loop."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            logger.warning("PC/SC monitor event dropped: %d events are waiting", _QUEUE_SIZE)


class PcscDriver:
    """The PC/SC driver for one configured `pcsc` device (see the module docstring)."""

    def __init__(
        self,
        device_id: str,
        reader_filter: str | None,
        identifier: CitizenIdentifier,
        *,
        ssc_atr_patterns: Sequence[str] = DEFAULT_SSC_ATR_PATTERNS,
        retry_min_s: float = 1.0,
        retry_max_s: float = 30.0,
        health_interval_s: float = 0.5,
        read_timeout_s: float = 5.0,
        monitors: MonitorHub | None = None,
    ) -> None:
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError(f"need 0 < retry_min_s <= retry_max_s, got {retry_min_s}, {retry_max_s}")
        if health_interval_s <= 0 or read_timeout_s <= 0:
            raise ValueError("health_interval_s and read_timeout_s must be positive")
        self.device_id = device_id
        self._filter = reader_filter.strip().casefold() if reader_filter else None
        self._filter_text = reader_filter.strip() if reader_filter else None
        self._identifier = identifier
        self._ssc_patterns = tuple(AtrPattern.parse(text) for text in ssc_atr_patterns)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._health_interval_s = health_interval_s
        self._read_timeout_s = read_timeout_s
        self._monitors = monitors if monitors is not None else shared_hub()
        self._readers: set[str] = set()
        self._cards: dict[str, bytes] = {}
        self._online: bool | None = None
        self._offline_reason: str | None = None

    def matches(self, reader: str) -> bool:
        """True if `reader` belongs to this device (`reader_filter` is a substring of its name)."""
        return self._filter is None or self._filter in reader.casefold()

    async def run(self, sink: EventSink) -> None:
        """Serve the readers until cancelled, reconnecting to pcscd whenever it is lost."""
        self._readers.clear()
        self._cards.clear()
        self._online = None
        self._offline_reason = None
        while True:
            subscription, queue = await self._connect(sink)
            broken = False
            try:
                problem = await self._serve(sink, subscription, queue)
                broken = True
            finally:
                await asyncio.to_thread(self._monitors.unsubscribe, subscription, broken=broken)
            logger.warning("%s: PC/SC lost: %s", self.device_id, problem)
            self._forget_all(sink)
            self._report_offline(sink, problem)

    async def _connect(self, sink: EventSink) -> tuple[Subscription, asyncio.Queue[_Item]]:
        """Subscribe to the monitors, retrying with backoff while pcscd is unavailable."""
        loop = asyncio.get_running_loop()

        async def attempt() -> tuple[Subscription, asyncio.Queue[_Item]]:
            queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_SIZE)
            bridge = _Bridge(loop, queue)
            future = loop.run_in_executor(
                None, self._monitors.subscribe, bridge.readers_changed, bridge.cards_changed
            )
            try:
                subscription = await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(functools.partial(self._unsubscribe_late, loop))
                raise
            return subscription, queue

        def failed(error: Exception, _wait_s: float) -> None:
            if isinstance(error, PcscUnavailableError):
                self._report_offline(sink, error.reason)

        return await open_with_backoff(
            attempt,
            retry_on=(PcscUnavailableError,),
            min_s=self._retry_min_s,
            max_s=self._retry_max_s,
            on_failure=failed,
        )

    def _unsubscribe_late(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Subscription]
    ) -> None:
        """A subscription that completed after its caller was cancelled is undone at once."""
        if future.cancelled() or future.exception() is not None:
            return
        loop.run_in_executor(
            None, functools.partial(self._monitors.unsubscribe, future.result(), broken=False)
        )

    async def _serve(self, sink: EventSink, subscription: Subscription, queue: asyncio.Queue[_Item]) -> str:
        """Handle monitor news until the monitors fail; return why they failed."""
        self._sync_readers(sink)
        while True:
            item: _Item | None = None
            try:
                async with asyncio.timeout(self._health_interval_s):
                    item = await queue.get()
            except TimeoutError:
                item = None
            problem = self._monitors.problem(subscription)
            if problem is not None:
                return problem
            if isinstance(item, _ReadersChanged):
                self._sync_readers(sink)
            elif isinstance(item, _CardsChanged):
                await self._cards_changed(sink, item)

    def _sync_readers(self, sink: EventSink) -> None:
        """Bring the attached readers in line with pcscd's list, then the online status."""
        current = {reader for reader in self._monitors.readers if self.matches(reader)}
        for reader in sorted(self._readers - current):
            self._drop_reader(sink, reader)
        for reader in sorted(current - self._readers):
            self._attach_reader(sink, reader)
        self._update_status(sink)

    def _attach_reader(self, sink: EventSink, reader: str) -> None:
        """Record and report a new reader."""
        self._readers.add(reader)
        logger.info("%s: reader attached: %s", self.device_id, reader)
        sink.notify(ReaderAttached(self.device_id, reader))

    def _drop_reader(self, sink: EventSink, reader: str) -> None:
        """Report a reader (and the card in it) as gone."""
        self._remove_card(sink, reader)
        if reader in self._readers:
            self._readers.discard(reader)
            logger.info("%s: reader detached: %s", self.device_id, reader)
            sink.notify(ReaderDetached(self.device_id, reader))

    def _remove_card(self, sink: EventSink, reader: str) -> None:
        """Report the card in `reader` as removed, if there is one."""
        if self._cards.pop(reader, None) is not None:
            logger.info("%s: card removed from %s", self.device_id, reader)
            sink.notify(CardRemoved(self.device_id, reader))

    def _forget_all(self, sink: EventSink) -> None:
        """pcscd is gone: every card and reader is gone with it."""
        for reader in sorted(self._readers | self._cards.keys()):
            self._drop_reader(sink, reader)

    def _update_status(self, sink: EventSink) -> None:
        """Online with at least one matching reader, offline (saying what to plug in) without."""
        if self._readers:
            if self._online is not True:
                self._online = True
                self._offline_reason = None
                detail = "PC/SC reader(s): " + ", ".join(sorted(self._readers))
                logger.info("%s: online (%s)", self.device_id, detail)
                sink.notify(DeviceOnline(self.device_id, detail))
            return
        wanted = f"matching {self._filter_text!r} " if self._filter_text else ""
        seen = ", ".join(self._monitors.readers) or "none"
        self._report_offline(
            sink,
            f"no PC/SC reader {wanted}is attached (pcscd sees: {seen}); plug the reader in, "
            "or fix this device's `reader` in the config",
        )

    def _report_offline(self, sink: EventSink, reason: str) -> None:
        """Report offline once per distinct reason."""
        if self._online is False and self._offline_reason == reason:
            return
        self._online = False
        self._offline_reason = reason
        logger.warning("%s: offline: %s", self.device_id, reason)
        sink.notify(DeviceOffline(self.device_id, reason))

    async def _cards_changed(self, sink: EventSink, change: _CardsChanged) -> None:
        """Report removed cards, then inserted ones (each read before the next event)."""
        for reader, atr in change.removed:
            if self._cards.get(reader) == atr:
                self._remove_card(sink, reader)
        for reader, atr in change.added:
            if not self.matches(reader) or self._cards.get(reader) == atr:
                continue
            if reader not in self._readers:
                self._attach_reader(sink, reader)
                self._update_status(sink)
            self._remove_card(sink, reader)
            self._cards[reader] = atr
            logger.info("%s: card inserted in %s, ATR %s", self.device_id, reader, atr.hex().upper())
            sink.notify(CardInserted(self.device_id, reader, atr.hex().upper()))
            await self._identify(sink, reader, atr)

    async def _identify(self, sink: EventSink, reader: str, atr: bytes) -> None:
        """Read what the default-deny rule allows from the card, on a worker thread."""
        card_class = classify(atr, self._ssc_patterns)
        if card_class is CardClass.OTHER:
            logger.info(
                "%s: card in %s is neither contactless nor a known 社会保障卡: no APDU sent",
                self.device_id,
                reader,
            )
            return
        try:
            async with asyncio.timeout(self._read_timeout_s):
                event = await asyncio.to_thread(self._read_card, reader, card_class)
        except TimeoutError:
            self._dropped(sink, reader, "read_timeout", f"no answer within {self._read_timeout_s} s")
            return
        except (CardChannelError, SscReadError) as exc:
            self._dropped(sink, reader, exc.reason, str(exc))
            return
        except ApduError as exc:
            self._dropped(sink, reader, "bad_response", str(exc))
            return
        outcome = await sink.submit(event)
        if outcome in (Outcome.FAILED, Outcome.REJECTED):
            logger.warning("%s: card read from %s was not stored: %s", self.device_id, reader, outcome.value)

    def _dropped(self, sink: EventSink, reader: str, reason: str, message: str) -> None:
        """Report a card read that did not complete."""
        logger.warning("%s: card in %s not read (%s): %s", self.device_id, reader, reason, message)
        sink.notify(FrameDropped(self.device_id, reason))

    def _read_card(self, reader: str, card_class: CardClass) -> CardIdentified:
        """Blocking read on a worker thread: the UID, or the social security identity."""
        with CardChannel(reader) as channel:
            if card_class is CardClass.CONTACTLESS:
                response = channel.transmit(GET_UID)
                uid = response.data.hex().upper() if response.ok and response.data else None
                if uid is None:
                    logger.info("%s: reader %s gave no UID (%s)", self.device_id, reader, response)
                return CardIdentified(
                    self.device_id, reader=reader, card_type="contactless", uid=uid, identity=None
                )
            identity = read_identity(channel.transmit, self._identifier)
        return CardIdentified(
            self.device_id, reader=reader, card_type="social_security", uid=None, identity=identity
        )


def from_config(devices: Sequence[DeviceConfig], context: DriverContext) -> PcscDriver:
    """The registry's factory: the driver of one configured `pcsc` device."""
    (device,) = devices
    return PcscDriver(device.id, device.reader, context.identifier)


if TYPE_CHECKING:
    _FACTORY: DriverFactory = from_config  # mypy checks that `PcscDriver` is a `drivers.base.Driver`
