"""Everything that touches pyscard: pcscd errors, the shared reader and card monitors, card channels.

pyscard's `ReaderMonitor` (shared state) and `CardMonitor` (a singleton) exist once per process,
so every `PcscDriver` of the process subscribes to one `MonitorHub`. Their threads need care:

- the reader monitor thread dies on the first exception its reader-listing function raises, so the
  hub gives it `_ReaderPoller.poll`, which never raises and remembers the error instead; that
  error is also how a lost pcscd is noticed (the poll runs every `period` seconds);
- the card monitor thread stops for good when pcscd goes away and is never restarted by pyscard,
  so after a loss the hub stops both threads, wakes the card thread with `SCardCancel`, releases its
  PC/SC context itself (pyscard's destructor would raise on a dead context), and resets the two
  singletons; the next subscription starts fresh monitors (a new "generation").

Nothing here is called on the event loop: every blocking method runs on a worker thread, and the
monitor callbacks only hand their news to the loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from smartcard import scard
from smartcard.CardMonitoring import CardMonitor, CardMonitoringThread
from smartcard.ReaderMonitoring import ReaderMonitor

from drivers.pcsc.apdu import Response

__all__ = [
    "CardChannel",
    "CardChannelError",
    "CardsCallback",
    "MonitorHub",
    "PcscUnavailableError",
    "Subscription",
    "describe_hresult",
    "shared_hub",
]

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S: Final = 2.0
_CANCEL_STEP_S: Final = 0.05
_U32: Final = 0xFFFFFFFF

CardsCallback = Callable[[list[tuple[str, bytes]], list[tuple[str, bytes]]], None]
"""Called on a monitor thread with (added, removed) cards as (reader name, ATR) pairs."""


def _code(hresult: int) -> int:
    """PC/SC result codes as unsigned 32-bit numbers (pyscard may hand back either sign)."""
    return hresult & _U32


def describe_hresult(hresult: int) -> str:
    """A technician's explanation of a PC/SC error code."""
    code = _code(hresult)
    if code == _code(scard.SCARD_E_NO_SERVICE):
        return (
            "pcscd is not running (PC/SC service not available): start it with "
            "'systemctl start pcscd' and see 'journalctl -u pcscd'"
        )
    if code == _code(scard.SCARD_E_SERVICE_STOPPED):
        return "pcscd stopped: start it again with 'systemctl start pcscd'"
    if code == _code(scard.SCARD_F_COMM_ERROR):
        return "lost the connection to pcscd (it stopped or restarted); see 'journalctl -u pcscd'"
    if code == _code(scard.SCARD_E_INVALID_HANDLE):
        return "pcscd restarted: the PC/SC context of the hub is no longer valid"
    return f"PC/SC error {scard.SCardGetErrorMessage(hresult).strip()} (0x{code:08X})"


class PcscUnavailableError(Exception):
    """pcscd cannot be used; `reason` says why, for the device's offline status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CardChannelError(Exception):
    """Talking to a card failed; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _release_context(context: Any) -> None:
    """Release a PC/SC context, ignoring failure (pcscd may already be gone)."""
    hresult = scard.SCardReleaseContext(context)
    if _code(hresult) != scard.SCARD_S_SUCCESS:
        logger.debug("SCardReleaseContext: %s", describe_hresult(hresult))


class _ReaderPoller:
    """Lists readers for the reader monitor thread on one PC/SC context; never raises.

    `error` is sticky: once a poll failed, the generation of monitors it belongs to is finished,
    even if pcscd is back by the next poll (the card monitor may not have survived).
    """

    def __init__(self) -> None:
        self._context: Any = None
        self.readers: tuple[str, ...] = ()
        self.error: str | None = None

    def prime(self) -> tuple[str, ...]:
        """First listing, on the caller's thread; raise `PcscUnavailableError` if pcscd is down."""
        self.error = None
        self._list()
        if self.error is not None:
            raise PcscUnavailableError(self.error)
        return self.readers

    def poll(self) -> list[str]:
        """The reader monitor's `readerProc`: the current list, or the last good one on error."""
        if self.error is None:
            try:
                self._list()
            except Exception as exc:  # the monitor thread would die on any exception
                self.error = f"listing PC/SC readers failed: {exc}"
        return list(self.readers)

    def close(self) -> None:
        """Release the polling context."""
        if self._context is not None:
            _release_context(self._context)
            self._context = None

    def _list(self) -> None:
        """One SCardListReaders call, establishing the context first if needed."""
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if _code(hresult) != scard.SCARD_S_SUCCESS:
                self.error = describe_hresult(hresult)
                return
            self._context = context
        hresult, names = scard.SCardListReaders(self._context, [])
        code = _code(hresult)
        if code == _code(scard.SCARD_E_NO_READERS_AVAILABLE):
            names = []
        elif code != scard.SCARD_S_SUCCESS:
            self.error = describe_hresult(hresult)
            self.close()
            return
        self.readers = tuple(str(name) for name in names)


class _ReaderObserver:
    """Observer for pyscard's ReaderMonitor: forwards "the reader list changed"."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def update(self, observable: object, handlers: object) -> None:
        """pyscard calls this with (added, removed); the subscriber re-reads the full list."""
        self._callback()


class _CardObserver:
    """Observer for pyscard's CardMonitor: forwards added and removed cards."""

    def __init__(self, callback: CardsCallback) -> None:
        self._callback = callback

    def update(self, observable: object, handlers: tuple[Sequence[Any], Sequence[Any]]) -> None:
        """pyscard calls this with (added cards, removed cards)."""
        added, removed = handlers
        self._callback(
            [(str(card.reader), bytes(card.atr)) for card in added],
            [(str(card.reader), bytes(card.atr)) for card in removed],
        )


@dataclass(eq=False)
class Subscription:
    """One driver's observers on one generation of monitors."""

    generation: int
    readers_observer: _ReaderObserver = field(repr=False)
    cards_observer: _CardObserver = field(repr=False)


class MonitorHub:
    """The process-wide owner of pyscard's reader and card monitors (see the module docstring)."""

    def __init__(self, period_s: float = 0.5) -> None:
        self._period_s = period_s
        self._lock = threading.Lock()
        self._generations = itertools.count(1)
        self._generation = 0
        self._subscriptions: set[Subscription] = set()
        self._reader_monitor: Any = None
        self._card_monitor: Any = None
        self._poller = _ReaderPoller()
        self._last_problem: str | None = None

    @property
    def readers(self) -> tuple[str, ...]:
        """The reader list of the latest poll."""
        return self._poller.readers

    def subscribe(self, on_readers: Callable[[], None], on_cards: CardsCallback) -> Subscription:
        """Start the monitors if needed and add a subscriber's observers (blocking).

        Raises `PcscUnavailableError` when pcscd does not answer. Both callbacks run on monitor
        threads (and once on this thread, with the monitors' current state).
        """
        with self._lock:
            if self._reader_monitor is not None and self._poller.error is not None:
                self._stop_locked()  # pcscd was lost but no subscriber has noticed yet
            if self._reader_monitor is None:
                self._start_locked()
            subscription = Subscription(
                self._generation, _ReaderObserver(on_readers), _CardObserver(on_cards)
            )
            self._subscriptions.add(subscription)
            self._reader_monitor.addObserver(subscription.readers_observer)
            self._card_monitor.addObserver(subscription.cards_observer)
            return subscription

    def unsubscribe(self, subscription: Subscription, *, broken: bool) -> None:
        """Remove a subscriber (blocking). `broken` stops the monitors for every subscriber."""
        with self._lock:
            if subscription.generation != self._generation:
                return
            self._subscriptions.discard(subscription)
            self._reader_monitor.deleteObserver(subscription.readers_observer)
            self._card_monitor.deleteObserver(subscription.cards_observer)
            if broken or not self._subscriptions:
                self._stop_locked()

    def problem(self, subscription: Subscription) -> str | None:
        """Why `subscription`'s monitors can no longer be trusted, or None while they can."""
        if subscription.generation != self._generation:
            return self._last_problem or "the PC/SC monitors were restarted"
        if self._poller.error is not None:
            return self._poller.error
        reader_thread = getattr(self._reader_monitor, "rmthread", None)
        if reader_thread is None or not reader_thread.is_alive():
            return "pyscard's reader monitor ended unexpectedly; reconnecting to pcscd"
        card_thread = CardMonitoringThread.instance
        if card_thread is None or not card_thread.is_alive():
            return "pcscd stopped or restarted (pyscard's card monitor ended); see 'journalctl -u pcscd'"
        return None

    def _start_locked(self) -> None:
        """Check pcscd, then start a new generation of monitors."""
        readers = self._poller.prime()
        self._generation = next(self._generations)
        self._last_problem = None
        self._reader_monitor = ReaderMonitor(
            startOnDemand=False, readerProc=self._poller.poll, period=self._period_s
        )
        self._card_monitor = CardMonitor().instance
        logger.debug("PC/SC monitors started (generation %d, readers %s)", self._generation, readers)

    def _stop_locked(self) -> None:
        """Stop both monitor threads and forget the generation (see the module docstring)."""
        self._last_problem = self._poller.error
        self._generation = next(self._generations)
        self._subscriptions.clear()
        reader_monitor, self._reader_monitor = self._reader_monitor, None
        self._card_monitor = None
        reader_thread = getattr(reader_monitor, "rmthread", None)
        if reader_thread is not None:
            reader_thread.stopEvent.set()
            if reader_thread.is_alive():
                reader_thread.join(_JOIN_TIMEOUT_S)
            if reader_thread.is_alive():
                logger.warning("pyscard's reader monitor thread did not stop within %s s", _JOIN_TIMEOUT_S)
        reader_monitor.deleteObservers()
        _stop_card_monitor()
        self._poller.close()
        logger.debug("PC/SC monitors stopped")


def _stop_card_monitor() -> None:
    """Stop pyscard's card monitor thread and reset its singletons so a new one can start."""
    thread = CardMonitoringThread.instance
    if thread is not None:
        thread.stop()
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            request = getattr(getattr(thread, "cardrequest", None), "pcsccardrequest", None)
            context = getattr(request, "hcontext", None)
            if context is not None:
                # Wakes its SCardGetStatusChange; repeated because a cancel sent before the call
                # starts is lost.
                scard.SCardCancel(context)
            thread.join(_CANCEL_STEP_S)
        if thread.is_alive():
            logger.warning("pyscard's card monitor thread did not stop; leaving it behind")
        else:
            request = getattr(getattr(thread, "cardrequest", None), "pcsccardrequest", None)
            if request is not None and request.hcontext is not None:
                _release_context(request.hcontext)
                request.hcontext = None
    CardMonitoringThread.instance = None
    CardMonitor.instance = None


class CardChannel:
    """A short connection to the card in one reader (shared mode, T=0 or T=1), blocking.

    Use as a context manager on a worker thread. The whole exchange is one PC/SC transaction, so
    another driver or program on the node cannot slip its APDUs between ours (and change the
    selected file); the card is left as it is on exit (no reset, so a contactless reader does not
    report the card again).
    """

    def __init__(self, reader: str) -> None:
        self._reader = reader
        self._context: Any = None
        self._card: Any = None
        self._pci: Any = None
        self._in_transaction = False

    def __enter__(self) -> CardChannel:
        """Establish a context and connect to the card."""
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            raise CardChannelError("pcscd_unavailable", describe_hresult(hresult))
        self._context = context
        hresult, card, protocol = scard.SCardConnect(
            context,
            self._reader,
            scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            self.close()
            raise CardChannelError(
                "connect_failed", f"cannot connect to the card in {self._reader}: {describe_hresult(hresult)}"
            )
        self._card = card
        self._pci = scard.SCARD_PCI_T0 if protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        hresult = scard.SCardBeginTransaction(card)
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            self.close()
            raise CardChannelError(
                "transaction_failed",
                f"cannot get the card in {self._reader} to ourselves: {describe_hresult(hresult)}",
            )
        self._in_transaction = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Disconnect and release the context."""
        self.close()

    def transmit(self, apdu: bytes) -> Response:
        """Send one command APDU; raise `CardChannelError` if the card or pcscd fails."""
        if self._card is None:
            raise CardChannelError("not_connected", "the card channel is closed")
        hresult, raw = scard.SCardTransmit(self._card, self._pci, list(apdu))
        if _code(hresult) != scard.SCARD_S_SUCCESS:
            raise CardChannelError("transmit_failed", f"card in {self._reader}: {describe_hresult(hresult)}")
        if len(raw) < 2:
            raise CardChannelError("bad_response", f"card in {self._reader} answered no status word")
        return Response.parse(bytes(raw))

    def close(self) -> None:
        """Disconnect (leaving the card as it is) and release the context; safe to repeat."""
        if self._card is not None:
            if self._in_transaction:
                scard.SCardEndTransaction(self._card, scard.SCARD_LEAVE_CARD)
                self._in_transaction = False
            scard.SCardDisconnect(self._card, scard.SCARD_LEAVE_CARD)
            self._card = None
        if self._context is not None:
            _release_context(self._context)
            self._context = None


_shared_hub: MonitorHub | None = None
_shared_hub_lock = threading.Lock()


def shared_hub() -> MonitorHub:
    """The process's one `MonitorHub` (pyscard's monitors are process-wide)."""
    global _shared_hub
    with _shared_hub_lock:
        if _shared_hub is None:
            _shared_hub = MonitorHub()
        return _shared_hub
