"""A simulated SAM ID-card reader on the far end of a pseudo-terminal, for tests and the demo.

It speaks the real wire protocol through the same codec as the driver: the driver opens a stable
symlink (e.g. `/tmp/…/ttyIDCARD`) that points at the slave side of a raw pty pair
(`drivers.pty_port`; DTR/RTS do not exist on a pty), and the simulator answers on the master side.
Helpers place and remove cards (built into text blocks of the right layout by
`textblock.encode_text_block`), inject faults into the next answers (bad checksum, truncation,
noise, oversized or short LEN, silence), and unplug/replug the reader by closing the pty and
re-pointing the symlink at a new one. Like real readers, it answers "no card" once right after a
successful read while the card stays in the field.

All card data here is fictitious.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from drivers.idcard.codec import (
    MAX_LEN,
    PHOTO_LEN,
    PREAMBLE,
    Command,
    DropReason,
    FrameDecoder,
    ProtocolError,
    Status,
    UnknownCommandError,
    decode_command,
    encode_card_data_response,
    encode_response,
)
from drivers.idcard.textblock import encode_text_block
from drivers.pty_port import PtyPort

__all__ = [
    "Fault",
    "SimCard",
    "SimulatedSamReader",
    "demo_cards",
    "resident_check_character",
    "run_simulated_reader",
]

logger = logging.getLogger(__name__)

_READ_CHUNK: Final = 4096
_HISTORY: Final = 512
_DEFAULT_SAM_ID: Final = bytes.fromhex("0501000020230915000123450000a1b2")


def _fake_photo(seed: int) -> bytes:
    """1024 bytes standing in for the WLT photo (deterministic, never a real image)."""
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(PHOTO_LEN))


@dataclass(frozen=True, slots=True)
class SimCard:
    """A card for the simulator: its layout (`resident`, `J`, `I`, `Y`) and field values."""

    layout: str
    fields: Mapping[str, str] = field(repr=False)
    photo: bytes = field(default_factory=lambda: _fake_photo(7), repr=False)
    fingerprint: bytes | None = field(default=None, repr=False)

    def text_block(self) -> bytes:
        """The 256-byte text block the card returns."""
        return encode_text_block(self.layout, self.fields)


class Fault(enum.Enum):
    """Ways to spoil the next answer(s), see `SimulatedSamReader.inject`."""

    BAD_CHECKSUM = "bad_checksum"
    """The answer's CHK byte is wrong."""
    TRUNCATE = "truncate"
    """Only the first half of the answer is sent, then nothing."""
    NOISE_BEFORE = "noise_before"
    """Random bytes (never containing the preamble) precede the answer."""
    OVERSIZED = "oversized"
    """Instead of the answer: a frame header whose LEN exceeds the maximum, then filler bytes."""
    BAD_LENGTH = "bad_length"
    """Instead of the answer: a frame whose LEN is below the minimum."""
    SILENT = "silent"
    """No answer at all."""


def resident_check_character(first17: str) -> str:
    """The check character of an 18-character resident number (ISO 7064 MOD 11-2)."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    if len(first17) != len(weights) or not first17.isdigit():
        raise ValueError("need the first 17 digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, weights, strict=True))
    return "10X98765432"[total % 11]


def demo_cards() -> list[SimCard]:
    """One fictitious card of each layout (resident, J, I, Y) for the demo and tests."""
    resident = "11010520000101123"
    permit = "81000019900202456"
    foreign_2023 = "93158619800101002"
    return [
        SimCard(
            "resident",
            {
                "name": "测试甲",
                "sex": "1",
                "nation": "01",
                "birth": "20000101",
                "address": "北京市朝阳区示例路1号",
                "id_number": resident + resident_check_character(resident),
                "authority": "北京市公安局朝阳分局",
                "valid_from": "20200101",
                "valid_until": "20400101",
            },
            photo=_fake_photo(1),
        ),
        SimCard(
            "J",
            {
                "name": "测试乙",
                "sex": "2",
                "birth": "19900202",
                "address": "广东省深圳市福田区示例路2号",
                "id_number": permit + resident_check_character(permit),
                "authority": "深圳市公安局",
                "valid_from": "20210303",
                "valid_until": "20260303",
                "pass_number": "H12345678",
                "issue_count": "01",
            },
            photo=_fake_photo(2),
        ),
        SimCard(
            "I",
            {
                "english_name": "SAMPLE, TEST",
                "sex": "1",
                "id_number": "USA110085010112",
                "nation": "USA",
                "name": "测试丙",
                "valid_from": "20170101",
                "valid_until": "20270101",
                "birth": "19850101",
                "card_version": "01",
                "authority": "1100",
            },
            photo=_fake_photo(3),
        ),
        SimCard(
            "Y",
            {
                "name": "测试丁",
                "sex": "2",
                "renewal_count": "00",
                "birth": "19800101",
                "english_name": "SAMPLE, TESTING WITH A VERY LONG ENGLISH NAME",
                "id_number": foreign_2023 + resident_check_character(foreign_2023),
                "valid_from": "20230808",
                "valid_until": "20330807",
                "nation": "PAK",
            },
            photo=_fake_photo(4),
        ),
    ]


class SimulatedSamReader:
    """A SAM reader behind a pty, reachable by the driver at `link` (a symlink to the slave).

    Use as `async with SimulatedSamReader(path) as reader:`. Faults queued with `inject` apply
    to the next answers in order. Counters: `commands` (commands received), `history` (the last
    commands with their `loop.time()`), `host_drops` (frames from the host the simulator rejected:
    it answers SW3 10 or 11 like a real SAM).
    """

    def __init__(
        self,
        link: str | os.PathLike[str],
        *,
        sam_status: Status = Status.SUCCESS,
        sam_id: bytes = _DEFAULT_SAM_ID,
        miss_once_after_read: bool = True,
        seed: int = 0,
    ) -> None:
        self.link = Path(link)
        self.sam_status = sam_status
        self.sam_id = sam_id
        self.miss_once_after_read = miss_once_after_read
        self.commands: Counter[Command] = Counter()
        self.history: deque[tuple[float, Command]] = deque(maxlen=_HISTORY)
        self.host_drops: Counter[DropReason] = Counter()
        self._rng = random.Random(seed)
        self._faults: deque[Fault] = deque()
        self._card: SimCard | None = None
        self._selected = False
        self._miss_next_find = False
        self._port = PtyPort(link)
        self._master: int | None = None
        self._out = bytearray()
        self._writing = False
        self._decoder = FrameDecoder(self._host_drop)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> SimulatedSamReader:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        """True while the pty exists and the symlink points at it."""
        return self._master is not None

    async def start(self) -> None:
        """Create the pty and the symlink ("plug the reader in")."""
        self._loop = asyncio.get_running_loop()
        self._plug()

    async def close(self) -> None:
        """Unplug and remove the symlink."""
        self.unplug()

    def _plug(self) -> None:
        """Open a raw pty pair, serve its master side and point the symlink at its slave."""
        if self._loop is None:
            raise RuntimeError("call start() first")
        if self._master is not None:
            return
        master = self._master = self._port.plug()
        self._decoder = FrameDecoder(self._host_drop)
        self._out.clear()
        self._writing = False
        self._loop.add_reader(master, self._on_readable)

    def unplug(self) -> None:
        """Pull the cable: close the pty (the host sees an I/O error) and remove the symlink."""
        master = self._master
        self._master = None
        if master is not None and self._loop is not None:
            self._loop.remove_reader(master)
            if self._writing:
                self._loop.remove_writer(master)
        self._writing = False
        self._out.clear()
        self._port.unplug()
        self._selected = False

    def replug(self) -> None:
        """Plug the reader back in: a new pty, the same symlink path."""
        self._plug()

    # -- cards and faults -------------------------------------------------------------------

    @property
    def card(self) -> SimCard | None:
        """The card in the field, if any."""
        return self._card

    def place_card(self, card: SimCard) -> None:
        """Put a card in the field (replacing any other)."""
        self._card = card
        self._selected = False
        self._miss_next_find = False

    def remove_card(self) -> None:
        """Take the card out of the field."""
        self._card = None
        self._selected = False
        self._miss_next_find = False

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Spoil the next `count` answers with `fault`."""
        self._faults.extend([fault] * count)

    def clear_faults(self) -> None:
        """Forget faults not yet applied (the reader behaves again)."""
        self._faults.clear()

    def send_raw(self, data: bytes) -> None:
        """Send bytes unasked (noise, stray frames)."""
        self._send(data)

    def noise(self, size: int) -> bytes:
        """Random bytes that never contain the frame preamble."""
        data = bytearray(self._rng.getrandbits(8) for _ in range(size))
        while (index := data.find(PREAMBLE)) >= 0:
            data[index] = 0x00
        return bytes(data)

    # -- the SAM ----------------------------------------------------------------------------

    def _host_drop(self, reason: DropReason) -> None:
        """A bad frame from the host: count it and answer as a real SAM would."""
        self.host_drops[reason] += 1
        if reason is DropReason.BAD_CHECKSUM:
            self._answer(encode_response(Status.CHECKSUM_ERROR))
        elif reason in (DropReason.BAD_LENGTH, DropReason.OVERSIZED):
            self._answer(encode_response(Status.LENGTH_ERROR))

    def _on_readable(self) -> None:
        """Read what the host sent and answer each complete command."""
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return
        for frame in self._decoder.feed(data):
            try:
                command = decode_command(frame)
            except UnknownCommandError:
                self._answer(encode_response(Status.COMMAND_ERROR))
                continue
            except ProtocolError:
                self._answer(encode_response(Status.LENGTH_ERROR))
                continue
            self.commands[command] += 1
            if self._loop is not None:
                self.history.append((self._loop.time(), command))
            self._answer(self._respond(command))

    def _respond(self, command: Command) -> bytes:
        """The answer to one command, given the card in the field."""
        card = self._card
        if command is Command.SAM_STATUS:
            return encode_response(self.sam_status)
        if command is Command.RESET_SAM:
            return encode_response(Status.SUCCESS)
        if command is Command.READ_SAM_ID:
            return encode_response(Status.SUCCESS, self.sam_id)
        if self.sam_status is not Status.SUCCESS:
            return encode_response(self.sam_status)
        if command is Command.FIND_CARD:
            if card is None or self._miss_next_find:
                self._miss_next_find = False
                return encode_response(Status.FIND_FAILED)
            return encode_response(Status.CARD_FOUND, bytes(4))
        if command is Command.SELECT_CARD:
            if card is None:
                return encode_response(Status.SELECT_FAILED)
            self._selected = True
            return encode_response(Status.SUCCESS, bytes(8))
        if card is None or not self._selected:
            return encode_response(Status.READ_FAILED)
        if command is Command.READ_EXTRA_ADDRESS:
            return encode_response(Status.NO_CONTENT)
        if command is Command.READ_WITH_FINGERPRINT and card.fingerprint is None:
            return encode_response(Status.NO_CONTENT)
        fingerprint = card.fingerprint if command is Command.READ_WITH_FINGERPRINT else None
        self._selected = False
        self._miss_next_find = self.miss_once_after_read
        return encode_card_data_response(card.text_block(), card.photo, fingerprint)

    def _answer(self, frame: bytes) -> None:
        """Send an answer, spoiled by the next queued fault if there is one."""
        fault = self._faults.popleft() if self._faults else None
        if fault is Fault.SILENT:
            return
        if fault is Fault.BAD_CHECKSUM:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        elif fault is Fault.TRUNCATE:
            frame = frame[: max(len(PREAMBLE) + 3, len(frame) // 2)]
        elif fault is Fault.NOISE_BEFORE:
            frame = self.noise(self._rng.randint(1, 40)) + frame
        elif fault is Fault.OVERSIZED:
            frame = PREAMBLE + (MAX_LEN + 1).to_bytes(2, "big") + bytes(16)
        elif fault is Fault.BAD_LENGTH:
            frame = PREAMBLE + (2).to_bytes(2, "big") + b"\x00\x02"
        self._send(frame)

    def _send(self, data: bytes) -> None:
        """Queue bytes for the host and write as much as the pty takes now."""
        if self._master is None:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        """Write queued bytes; wait for writability when the pty buffer is full."""
        master = self._master
        if master is None or self._loop is None:
            return
        while self._out:
            try:
                written = os.write(master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                break
            del self._out[:written]
        if self._out and not self._writing:
            self._loop.add_writer(master, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(master)
            self._writing = False


async def run_simulated_reader(
    link: str | os.PathLike[str],
    *,
    cards: Sequence[SimCard] | None = None,
    dwell_s: float = 4.0,
    gap_s: float = 6.0,
    placements: int | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve a simulated reader at `link`: each card in turn is placed for `dwell_s`, then the
    field stays empty for `gap_s`. Runs until cancelled, or for `placements` placements.

    For the CLI (`hallhub demo`, `hallhub simulate`): point an `idcard` device's `port` at `link`.
    `ready` is set once the symlink exists.
    """
    deck = list(cards) if cards is not None else demo_cards()
    if not deck:
        raise ValueError("need at least one card")
    async with SimulatedSamReader(link) as reader:
        logger.info("simulated ID card reader at %s", reader.link)
        if ready is not None:
            ready.set()
        count = 0
        while placements is None or count < placements:
            await asyncio.sleep(gap_s)
            reader.place_card(deck[count % len(deck)])
            count += 1
            await asyncio.sleep(dwell_s)
            reader.remove_card()
