"""Driver for second-generation ID card readers speaking the SAM protocol over serial (§4).

Cycle: find card → select card → read basic information, polled no faster than every 300 ms. The
text block is decoded, handed to the node's `CitizenIdentifier` (mask, HMAC, optional seal) and
dropped; the photo bytes are never read. One `CardRead` goes to `sink.submit` per card placement:
a card held on the reader is reported once, and again only after it has left the field.

Privacy: `CardRead` has no field for a name, a full number, an address or a photo, and nothing
decoded from the text block is ever logged (log lines name the device, the port, the card type and
the masked number at most).

Card presence: readers answer "no card" once right after a read while the card is still in the
field, so a card counts as gone only after `absent_polls` (default 2) "no card" answers in a row.
A different card placed within that time (about 0.6 s) of removing the previous one is therefore
taken for the same card; after a reconnect the card found first is read again and compared by
its reference, so a card swapped while the reader was unplugged is reported and the same card is
not.

Robustness: port errors, an unplugged reader and a reader that stops answering all close the
port, report `DeviceOffline` once, and reopen it with exponential backoff and jitter; on every open
the SAM's status is checked before `DeviceOnline` is reported. Bad frames are dropped, counted in
`drops` and reported as `FrameDropped`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from drivers.base import (
    CitizenIdentifier,
    DeviceOffline,
    DeviceOnline,
    EventSink,
    FrameDropped,
    Outcome,
)
from drivers.idcard.codec import Command, ProtocolError, Response, Status, decode_card_data
from drivers.idcard.events import CardRead
from drivers.idcard.protocol import ReaderLostError, ReaderTimeoutError, SamLink
from drivers.idcard.textblock import TextBlockError, decode_text_block
from drivers.registry import serial_baud
from drivers.reopen import open_with_backoff

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DriverContext, DriverFactory

__all__ = ["MIN_POLL_INTERVAL_S", "CardRead", "IdCardReaderDriver", "SamFaultError", "from_config"]

logger = logging.getLogger(__name__)

MIN_POLL_INTERVAL_S: Final = 0.3
"""§4: poll find-card no faster than every 300 ms."""

BAD_CARD_DATA: Final = "bad_card_data"
"""Drop label for a read answer whose card data or text block does not decode."""
BAD_ANSWER: Final = "bad_answer"
"""Drop label for an answer frame too short to carry the status bytes."""

_FATAL_STATUSES: Final = frozenset({Status.SAM_SELF_TEST_FAILED, Status.SAM_UNAUTHORISED})


class SamFaultError(Exception):
    """The SAM reported a fault that stops all reads (self-test failed, unauthorised...)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.describe())
        self.response = response


class _ReaderSilentError(Exception):
    """The reader missed several answers in a row: treat it as gone and reopen the port."""


class IdCardReaderDriver:
    """Serves one SAM ID-card reader on a serial port until cancelled.

    `identifier` is the node's `CitizenIdentifier` (the only object that sees a full number).
    `absent_polls` consecutive "no card" answers mean the card has left the field (readers answer
    "no card" once right after a read while the card is still there). `silent_polls` consecutive
    unanswered commands mean the reader is gone.
    """

    def __init__(
        self,
        device_id: str,
        port: str,
        baud: int = 115200,
        *,
        identifier: CitizenIdentifier,
        poll_interval_s: float = MIN_POLL_INTERVAL_S,
        request_timeout_s: float = 0.5,
        read_timeout_s: float = 2.0,
        absent_polls: int = 2,
        silent_polls: int = 3,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        if poll_interval_s < MIN_POLL_INTERVAL_S:
            raise ValueError(
                f"device {device_id}: poll_interval_s must be at least {MIN_POLL_INTERVAL_S} s "
                "(the SAM must not be polled faster than every 300 ms)"
            )
        if absent_polls < 1 or silent_polls < 1:
            raise ValueError(f"device {device_id}: absent_polls and silent_polls must be >= 1")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(f"device {device_id}: need 0 < reconnect_min_s <= reconnect_max_s")
        self.device_id = device_id
        self.port = port
        self.baud = baud
        self._identifier = identifier
        self._poll_interval_s = poll_interval_s
        self._request_timeout_s = request_timeout_s
        self._read_timeout_s = read_timeout_s
        self._absent_polls = absent_polls
        self._silent_polls = silent_polls
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._online: bool | None = None
        self._held_ref: str | None = None
        self._recheck_held = False
        self._absent = 0
        self._silent = 0
        self._last_problem: str | None = None
        self.drops: Counter[str] = Counter()
        """Frames dropped since start, by reason (also reported as `FrameDropped`)."""
        self.reads = 0
        """Cards reported since start."""

    def __repr__(self) -> str:
        """Identify the driver by device and port only."""
        return f"IdCardReaderDriver(device_id={self.device_id!r}, port={self.port!r})"

    async def run(self, sink: EventSink) -> None:
        """Serve the reader until cancelled, reopening the port after every failure."""
        while True:
            link = await self._connect(sink)
            try:
                reason = await self._serve(link, sink)
            finally:
                await link.aclose()
            if self._set_offline(sink, reason):
                logger.warning("ID card reader %s offline: %s; reopening", self.device_id, reason)
            self._recheck_held = self._held_ref is not None
            await asyncio.sleep(self._reconnect_min_s * random.uniform(0.5, 1.0))

    # -- connection -------------------------------------------------------------------------

    async def _connect(self, sink: EventSink) -> SamLink:
        """Open the port and check the SAM, retrying with exponential backoff and full jitter."""
        return await open_with_backoff(
            lambda: self._open_checked(sink),
            retry_on=(OSError, ReaderLostError, ReaderTimeoutError, ProtocolError, SamFaultError),
            min_s=self._reconnect_min_s,
            max_s=self._reconnect_max_s,
            floor_s=self._reconnect_min_s / 2,
            on_failure=lambda error, delay: self._connect_failed(sink, error, delay),
        )

    def _connect_failed(self, sink: EventSink, exc: Exception, delay: float) -> None:
        """Report the device offline (once) and log what a technician should check."""
        reason = _describe_error(exc, self.port)
        changed = self._set_offline(sink, reason)
        logger.log(
            logging.WARNING if changed else logging.DEBUG,
            "ID card reader %s offline: %s; retrying in %.1f s",
            self.device_id,
            reason,
            delay,
        )

    async def _open_checked(self, sink: EventSink) -> SamLink:
        """Open the port, check the SAM status and read its id; report the device online."""
        link = await SamLink.open(self.port, self.baud, lambda reason: self._dropped(sink, reason))
        try:
            status = await link.request(Command.SAM_STATUS, self._request_timeout_s)
            if status.sw3 != Status.SUCCESS:
                raise SamFaultError(status)
            sam_id = await link.request(Command.READ_SAM_ID, self._request_timeout_s)
        except BaseException:
            await link.aclose()
            raise
        detail = f"SAM ok on {self.port}"
        if sam_id.sw3 == Status.SUCCESS and sam_id.data:
            detail += f", SAM id {sam_id.data.hex()}"
        self._silent = 0
        self._last_problem = None
        if self._online is not True:
            self._online = True
            logger.info("ID card reader %s online: %s", self.device_id, detail)
            sink.notify(DeviceOnline(self.device_id, detail=detail))
        return link

    def _set_offline(self, sink: EventSink, reason: str) -> bool:
        """Report `DeviceOffline` on the transition only; True if this call reported it."""
        if self._online is False:
            return False
        self._online = False
        sink.notify(DeviceOffline(self.device_id, reason=reason))
        return True

    def _dropped(self, sink: EventSink, reason: str) -> None:
        """Count a dropped frame and report it."""
        self.drops[reason] += 1
        logger.debug("ID card reader %s dropped a frame: %s", self.device_id, reason)
        sink.notify(FrameDropped(self.device_id, reason=reason))

    # -- polling ----------------------------------------------------------------------------

    async def _serve(self, link: SamLink, sink: EventSink) -> str:
        """Poll until the link fails; return the reason for technicians."""
        try:
            while True:
                await self._poll_once(link, sink)
                await asyncio.sleep(self._poll_interval_s)
        except (ReaderLostError, _ReaderSilentError, SamFaultError, OSError) as exc:
            return _describe_error(exc, self.port)

    async def _request(
        self, link: SamLink, sink: EventSink, command: Command, timeout_s: float
    ) -> Response | None:
        """One command; None if unanswered or unusable (counted), after too many: reader gone."""
        try:
            response = await link.request(command, timeout_s)
        except ReaderTimeoutError as exc:
            self._silent += 1
            if self._silent >= self._silent_polls:
                raise _ReaderSilentError(
                    f"no answer to {self._silent} commands in a row (last: {command.name})"
                ) from exc
            return None
        except ProtocolError:
            self._silent = 0
            self._dropped(sink, BAD_ANSWER)
            return None
        self._silent = 0
        if response.sw3 in _FATAL_STATUSES:
            raise SamFaultError(response)
        return response

    def _problem(self, what: str, response: Response | None) -> None:
        """Log a card-level problem once per change (polls must not flood the log)."""
        if response is None:
            return
        text = f"{what}: {response.describe()}"
        if text != self._last_problem:
            self._last_problem = text
            logger.warning("ID card reader %s: %s", self.device_id, text)

    async def _poll_once(self, link: SamLink, sink: EventSink) -> None:
        """Find card; read it if it is newly placed (or must be rechecked after a reconnect)."""
        found = await self._request(link, sink, Command.FIND_CARD, self._request_timeout_s)
        if found is None:
            return
        if found.sw3 == Status.FIND_FAILED:
            self._absent += 1
            if self._absent >= self._absent_polls:
                self._held_ref = None
                self._recheck_held = False
            return
        if found.sw3 != Status.CARD_FOUND:
            self._problem("find card", found)
            return
        self._absent = 0
        if self._held_ref is not None and not self._recheck_held:
            return
        await self._read_card(link, sink)

    async def _read_card(self, link: SamLink, sink: EventSink) -> None:
        """Select and read the card, then report it (unless it is the card already reported)."""
        selected = await self._request(link, sink, Command.SELECT_CARD, self._request_timeout_s)
        if selected is None or selected.sw3 != Status.SUCCESS:
            self._problem("select card", selected)
            return
        answer = await self._request(link, sink, Command.READ_BASIC, self._read_timeout_s)
        if answer is None or answer.sw3 != Status.SUCCESS:
            self._problem("read card", answer)
            return
        try:
            text = decode_text_block(decode_card_data(answer.data).text)
            identity = self._identifier.identify(text.id_number, text.name)
        except (ProtocolError, TextBlockError, ValueError) as exc:
            self._dropped(sink, BAD_CARD_DATA)
            logger.warning("ID card reader %s: card data rejected: %s", self.device_id, exc)
            return
        self._last_problem = None
        if self._recheck_held and identity.ref == self._held_ref:
            self._recheck_held = False
            return
        event = CardRead(
            self.device_id,
            card_type=text.card_type,
            identity=identity,
            sex=text.sex,
            birth_year=text.birth_year,
            valid_until=text.valid_until,
        )
        del text, answer  # drop the decoded personal data as early as possible
        self._held_ref = identity.ref
        self._recheck_held = False
        self.reads += 1
        logger.info(
            "ID card reader %s: %s card read (%s)",
            self.device_id,
            event.card_type.value,
            identity.masked,
        )
        outcome = await sink.submit(event)
        if outcome is Outcome.FAILED:
            self._held_ref = None
            logger.warning(
                "ID card reader %s: the hub could not store the card read; it will be read again",
                self.device_id,
            )


def _describe_error(exc: BaseException | None, port: str) -> str:
    """A technician-readable reason for a connection failure (no personal data can be in it)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, SamFaultError):
        return f"SAM fault: {exc}"
    if isinstance(exc, ReaderLostError):
        return f"port {port} closed ({exc.reason}); is the reader unplugged?"
    if isinstance(exc, ReaderTimeoutError):
        return f"the reader on {port} does not answer ({exc}); check the baud rate and power"
    if isinstance(exc, _ReaderSilentError):
        return f"the reader on {port} stopped answering ({exc})"
    if isinstance(exc, ProtocolError):
        return f"the reader on {port} sent a malformed answer ({exc})"
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
        return f"cannot use port {port}: {detail}"
    return f"{type(exc).__name__}: {exc}"


def from_config(devices: Sequence[DeviceConfig], context: DriverContext) -> IdCardReaderDriver:
    """The registry's factory: the reader of one configured `idcard` device."""
    (device,) = devices
    return IdCardReaderDriver(
        device.id, device.port or "", serial_baud(device), identifier=context.identifier
    )


if TYPE_CHECKING:
    _FACTORY: DriverFactory = from_config  # mypy checks that `IdCardReaderDriver` is a `drivers.base.Driver`
