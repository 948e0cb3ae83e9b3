"""Fake smart cards that plug into vpcd, the virtual PC/SC reader of vsmartcard.

vpcd protocol (vsmartcard `virtualsmartcard/doc/api.rst` and `src/vpcd/vpcd.c`): vpcd listens on
TCP (port = the reader's CHANNELID in /etc/reader.conf.d/vpcd, 0x8C7B = 35963 for the first
reader, +1 for the second); a card connects to it, and connecting is inserting the card, closing is
removing it. Every message, both ways, is a 2-byte big-endian length and that many bytes. A 1-byte
message from vpcd is a control code: 0 power off, 1 power on, 2 reset (no answer to these), 4 get
ATR (answer: the ATR). vpcd polls presence with get-ATR. Any longer message is a command APDU,
answered with response data and SW1 SW2.

Each card records every APDU it receives (`apdus`), so a test can prove that a card got none.
`answer` is usable without vpcd too, as a `Transmit` for unit tests.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Final

from drivers.pcsc.apdu import Response
from drivers.pcsc.ssc import EF05, EF06, MOHRSS_RID, RECORDS, SSSE_AID, encode_record

VPCD_HOST: Final = "127.0.0.1"
CTRL_OFF: Final = 0
CTRL_ON: Final = 1
CTRL_RESET: Final = 2
CTRL_ATR: Final = 4

SW_OK: Final = b"\x90\x00"
SW_FILE_NOT_FOUND: Final = b"\x6a\x82"
SW_RECORD_NOT_FOUND: Final = b"\x6a\x83"
SW_NO_CURRENT_EF: Final = b"\x69\x86"
SW_INS_NOT_SUPPORTED: Final = b"\x6d\x00"
SW_FUNC_NOT_SUPPORTED: Final = b"\x6a\x81"

_CONNECT_TIMEOUT_S: Final = 5.0
_POLL_S: Final = 0.05
_JOIN_TIMEOUT_S: Final = 3.0


class FakeCard:
    """A card on a vpcd socket: `insert(port)` connects, `remove()` disconnects."""

    def __init__(self, atr: bytes) -> None:
        self.atr = atr
        self.apdus: list[bytes] = []
        self.powered = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def answer(self, apdu: bytes) -> bytes:
        """Answer one command APDU (response data + SW1 SW2). Subclasses script this."""
        return SW_INS_NOT_SUPPORTED

    def transmit(self, apdu: bytes) -> Response:
        """Record and answer `apdu` directly (no vpcd): a `Transmit` for unit tests."""
        self.apdus.append(bytes(apdu))
        return Response.parse(self.answer(bytes(apdu)))

    def insert(self, port: int, host: str = VPCD_HOST) -> None:
        """Connect to vpcd (retrying while it is not listening yet, for at most 5 s)."""
        if self._thread is not None:
            raise RuntimeError("card already inserted")
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_S)
        sock.settimeout(_POLL_S)
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="fake-card", daemon=True)
        self._thread.start()

    def remove(self) -> None:
        """Disconnect from vpcd and wait for the serving thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> FakeCard:
        """Use `with card:` after `insert` to be sure it is removed."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the card."""
        self.remove()

    def _serve(self) -> None:
        """Answer vpcd until removed or vpcd closes the connection."""
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                header = self._recv_exact(sock, 2)
                if header is None:
                    return
                (length,) = struct.unpack(">H", header)
                message = self._recv_exact(sock, length)
                if message is None:
                    return
                reply = self._handle(message)
                if reply is not None:
                    sock.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _handle(self, message: bytes) -> bytes | None:
        """A control code or an APDU; None when vpcd expects no answer."""
        if len(message) == 1:
            code = message[0]
            if code == CTRL_ATR:
                return self.atr
            if code in (CTRL_ON, CTRL_RESET):
                self.powered = True
            elif code == CTRL_OFF:
                self.powered = False
            return None
        self.apdus.append(message)
        return self.answer(message)

    def _recv_exact(self, sock: socket.socket, size: int) -> bytes | None:
        """Read `size` bytes, checking for removal between timeouts; None at EOF or removal."""
        data = bytearray()
        while len(data) < size:
            if self._stop.is_set():
                return None
            try:
                chunk = sock.recv(size - len(data))
            except TimeoutError:
                continue
            if not chunk:
                return None
            data += chunk
        return bytes(data)


CONTACTLESS_ATR: Final = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
"""PC/SC Part 3 pseudo-ATR of a MIFARE Classic 1K in a contactless reader."""

SSC_ATR: Final = bytes.fromhex("3B6D000000815431008660240520000001")
"""A 社会保障卡 COS ATR: 3B 6D 00 00, chip maker 00 81, COS 54 31 00, card maker 86 60, date+serial."""

EMV_ATR: Final = bytes.fromhex("3B6800000073C84013009000")
"""A contact bank-card-like ATR (T=0, TB1 = TC1 = 00, 8 historical bytes)."""


class ContactlessCard(FakeCard):
    """A contactless card: answers GET DATA UID (`FF CA 00 00 00`) like a reader would."""

    def __init__(self, uid: bytes, atr: bytes = CONTACTLESS_ATR) -> None:
        super().__init__(atr)
        self.uid = uid

    def answer(self, apdu: bytes) -> bytes:
        """UID for `FF CA 00 00 00`, `6A 81` for anything else."""
        if apdu[:4] == b"\xff\xca\x00\x00":
            return self.uid + SW_OK
        return SW_FUNC_NOT_SUPPORTED


class SocialSecurityCard(FakeCard):
    """A 社会保障卡: the SSSE application with EF05 and EF06 as records (`drivers.pcsc.ssc.RECORDS`)."""

    def __init__(
        self,
        id_number: str,
        name: str,
        *,
        atr: bytes = SSC_ATR,
        region: bytes = bytes.fromhex("110105"),
    ) -> None:
        super().__init__(atr)
        card_id = region + MOHRSS_RID + bytes.fromhex("00000001") + b"\xff" * 4
        values = {
            "card_id": card_id,
            "card_type": b"3",
            "spec_version": b"3.00",
            "issuer_code": bytes.fromhex("110105D15600000500000001"),
            "issue_date": bytes.fromhex("20240520"),
            "expiry_date": bytes.fromhex("20340520"),
            "card_number": b"A12345678",
            "id_number": id_number.encode("ascii"),
            "name": name.encode("gb18030"),
            "sex": b"1",
            "nation": bytes.fromhex("01"),
            "birthplace": bytes.fromhex("110105"),
            "birth_date": bytes.fromhex("19491231"),
        }
        self.files: dict[int, dict[int, bytes]] = {EF05: {}, EF06: {}}
        for key, value in values.items():
            spec = RECORDS[key]
            self.files[spec.ef][spec.record_id] = encode_record(spec, value)
        self.app_selected = False
        self.current_ef: int | None = None

    def answer(self, apdu: bytes) -> bytes:
        """SELECT by AID / by EF id and READ RECORD by identifier, like the real card."""
        ins, p1, p2 = apdu[1], apdu[2], apdu[3]
        if ins == 0xA4 and p1 == 0x04:
            data = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
            self.app_selected = data == SSSE_AID
            self.current_ef = None
            return SW_OK if self.app_selected else SW_FILE_NOT_FOUND
        if ins == 0xA4 and p1 in (0x00, 0x02) and len(apdu) >= 7:
            file_id = int.from_bytes(apdu[5:7], "big")
            if not self.app_selected or file_id not in self.files:
                return SW_FILE_NOT_FOUND
            self.current_ef = file_id
            return SW_OK
        if ins == 0xB2 and p2 == 0x00:
            if self.current_ef is None:
                return SW_NO_CURRENT_EF
            record = self.files[self.current_ef].get(p1)
            if record is None:
                return SW_RECORD_NOT_FOUND
            le = apdu[4] if len(apdu) == 5 else 0
            if le not in (0, len(record)):
                return bytes((0x6C, len(record)))
            return record + SW_OK
        return SW_INS_NOT_SUPPORTED


class EmvCard(FakeCard):
    """A bank card: would answer anything, but the driver must never send it an APDU."""

    def __init__(self, atr: bytes = EMV_ATR) -> None:
        super().__init__(atr)

    def answer(self, apdu: bytes) -> bytes:
        """Accept everything, so that a wrongly sent APDU would go unnoticed but for `apdus`."""
        return SW_OK


class RefusingCard(FakeCard):
    """A card that refuses every command with `6A 82`: say, a bank card whose COS shares an ATR."""

    def answer(self, apdu: bytes) -> bytes:
        """File or application not found."""
        return SW_FILE_NOT_FOUND
