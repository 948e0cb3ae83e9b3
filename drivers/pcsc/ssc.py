"""社会保障卡 (social security card): the record layout as data, and the read sequence.

Layout (人社信息函〔2012〕37号 "社会保障卡文件结构和数据项 V2.0", carried on in LD/T 32-2015):
the SSSE application (AID `7378312E73682EC9E7BBE1B1A3D5CF`, "sx1.sh.社会保障" in GBK) holds the
basic files EF05 (发卡机构数据, issuer data) and EF06 (持卡人基本信息, holder data), readable
without a PIN. Each data item is one record whose identifier is its tag; READ RECORD with P2 = 00
(`00 B2 tag 00 Le`) on the selected EF returns it as `tag, length, value`. `an` values are
left-aligned and padded with 00 bytes (GB18030 text), `cn` values are BCD padded with F nibbles.
The tags and sizes below were checked against public reader code and notes that use the same
commands (e.g. `00B2080014` for 社会保障号码, `00B2090020` for 姓名; the CSDN note "社会保障卡
读取基本文件数据", blog.csdn.net/zz_bubble/article/details/106245384); the standard itself was not
available to check.

Of all this the driver reads only: EF05/01 (卡识别码, to confirm the card is issued under the
MOHRSS registered id `D1 56 00 00 05` before any personal data is read), EF06/08 (社会保障号码,
the citizen's ID number) and EF06/09 (姓名, name). Both go straight to
`CitizenIdentifier.identify`, and neither is kept, logged or put in an exception message.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from drivers.base import CitizenIdentifier, CitizenIdentity
from drivers.pcsc.apdu import Response, get_response, read_record, select_aid, select_ef

__all__ = [
    "EF05",
    "EF06",
    "MOHRSS_RID",
    "RECORDS",
    "SSSE_AID",
    "Format",
    "RecordError",
    "RecordSpec",
    "SscReadError",
    "Transmit",
    "decode_an",
    "decode_cn",
    "encode_record",
    "exchange",
    "is_valid_id_number",
    "parse_record",
    "read_identity",
]

logger = logging.getLogger(__name__)

SSSE_AID: Final = bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF")
MOHRSS_RID: Final = bytes.fromhex("D156000005")
EF05: Final = 0xEF05
EF06: Final = 0xEF06

Transmit = Callable[[bytes], Response]
"""Send one command APDU to the card and return its response (raises on transport errors)."""


class Format(enum.StrEnum):
    """Data item formats of the card specification."""

    AN = "an"  # text, left-aligned, padded with 00
    CN = "cn"  # BCD digits, padded with F nibbles
    B = "b"  # binary


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """One data item: its file, record identifier (= tag), value size, format and name."""

    ef: int
    record_id: int
    size: int
    fmt: Format
    label: str

    @property
    def le(self) -> int:
        """READ RECORD length: tag and length bytes plus the value."""
        return self.size + 2

    @property
    def where(self) -> str:
        """`EF06/08`-style location for messages."""
        return f"EF{self.ef & 0xFF:02X}/{self.record_id:02X}"


RECORDS: Final[Mapping[str, RecordSpec]] = MappingProxyType(
    {
        "card_id": RecordSpec(EF05, 0x01, 16, Format.B, "卡识别码"),
        "card_type": RecordSpec(EF05, 0x02, 1, Format.AN, "卡的类别"),
        "spec_version": RecordSpec(EF05, 0x03, 4, Format.AN, "规范版本"),
        "issuer_code": RecordSpec(EF05, 0x04, 12, Format.B, "初始化机构编号"),
        "issue_date": RecordSpec(EF05, 0x05, 4, Format.CN, "发卡日期"),
        "expiry_date": RecordSpec(EF05, 0x06, 4, Format.CN, "卡有效期"),
        "card_number": RecordSpec(EF05, 0x07, 9, Format.AN, "卡号"),
        "id_number": RecordSpec(EF06, 0x08, 18, Format.AN, "社会保障号码"),
        "name": RecordSpec(EF06, 0x09, 30, Format.AN, "姓名"),
        "sex": RecordSpec(EF06, 0x0A, 1, Format.AN, "性别"),
        "nation": RecordSpec(EF06, 0x0B, 1, Format.CN, "民族"),
        "birthplace": RecordSpec(EF06, 0x0C, 3, Format.CN, "出生地"),
        "birth_date": RecordSpec(EF06, 0x0D, 4, Format.CN, "出生日期"),
    }
)


class RecordError(ValueError):
    """A record does not have the expected tag or length (the message never holds its value)."""


class SscReadError(Exception):
    """Reading a social security card stopped; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_record(spec: RecordSpec, data: bytes) -> bytes:
    """Check `tag, length, value` against `spec` and return the value."""
    if len(data) < 2:
        raise RecordError(f"{spec.where}: {len(data)} bytes, too short for tag and length")
    tag, length = data[0], data[1]
    if tag != spec.record_id:
        raise RecordError(f"{spec.where}: tag {tag:02X}, expected {spec.record_id:02X}")
    if length > spec.size or len(data) < 2 + length:
        raise RecordError(
            f"{spec.where}: length byte {length} with {len(data) - 2} value bytes, "
            f"at most {spec.size} expected"
        )
    return bytes(data[2 : 2 + length])


def encode_record(spec: RecordSpec, value: bytes) -> bytes:
    """Build `tag, length, value` for `spec`, padding the value to its full size (for simulators)."""
    if len(value) > spec.size:
        raise RecordError(f"{spec.where}: value of {len(value)} bytes, at most {spec.size}")
    pad = b"\xff" if spec.fmt is Format.CN else b"\x00"
    return bytes((spec.record_id, spec.size)) + value + pad * (spec.size - len(value))


def decode_an(value: bytes) -> str:
    """Decode an `an` item: GB18030 text without its 00 (or space) padding."""
    return value.rstrip(b"\x00 ").decode("gb18030")


def decode_cn(value: bytes) -> str:
    """Decode a `cn` item: BCD digits without their F padding."""
    return value.hex().upper().rstrip("F")


_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
_ID_LENGTH: Final = 18


def is_valid_id_number(number: str) -> bool:
    """True for an 18-character number whose check character is right (GB 11643, ISO 7064 11-2)."""
    if len(number) != _ID_LENGTH or not number[:-1].isascii() or not number[:-1].isdigit():
        return False
    total = sum(int(digit) * weight for digit, weight in zip(number, _ID_WEIGHTS, strict=False))
    return _ID_CHECK[total % 11] == number[-1].upper()


def exchange(transmit: Transmit, apdu: bytes) -> Response:
    """Send `apdu`, fetching announced data (`61 xx`) or repeating with the right Le (`6C xx`).

    Each of the two corrections is made at most once, so a misbehaving card cannot loop us.
    """
    response = transmit(apdu)
    if response.sw1 == 0x6C and len(apdu) == 5:  # case 2 (header + Le): resend with Le = SW2
        response = transmit(apdu[:-1] + bytes((response.sw2,)))
    if response.sw1 == 0x61:
        response = transmit(get_response(response.sw2 or 256))
    return response


def _read(transmit: Transmit, spec: RecordSpec) -> bytes:
    """READ RECORD one item of the selected EF and return its value."""
    response = exchange(transmit, read_record(spec.record_id, spec.le))
    if not response.ok:
        raise SscReadError(
            "ssc_read_failed", f"READ RECORD {spec.where} ({spec.label}) answered SW {response.sw:04X}"
        )
    try:
        return parse_record(spec, response.data)
    except RecordError as exc:
        raise SscReadError("ssc_bad_record", str(exc)) from None


def _select_ef(transmit: Transmit, file_id: int) -> None:
    """SELECT an EF of the SSSE, or stop."""
    response = exchange(transmit, select_ef(file_id))
    if not response.ok:
        raise SscReadError("ssc_select_failed", f"SELECT EF{file_id:04X} answered SW {response.sw:04X}")


def read_identity(transmit: Transmit, identifier: CitizenIdentifier) -> CitizenIdentity:
    """Read a social security card's ID number and name and turn them into a `CitizenIdentity`.

    Stops at the first refusal: a card without the SSSE application (for instance a bank card
    whose ATR happened to match) gets exactly one APDU, the SELECT, and nothing else.
    """
    selected = exchange(transmit, select_aid(SSSE_AID))
    if not selected.ok:
        raise SscReadError(
            "ssc_no_application", f"SELECT SSSE answered SW {selected.sw:04X}: not a 社会保障卡"
        )
    _select_ef(transmit, EF05)
    if MOHRSS_RID not in _read(transmit, RECORDS["card_id"]):
        raise SscReadError("ssc_bad_card_id", "EF05/01 (卡识别码) does not carry the MOHRSS id D156000005")
    _select_ef(transmit, EF06)
    number_spec, name_spec = RECORDS["id_number"], RECORDS["name"]
    try:
        number = decode_an(_read(transmit, number_spec)).strip().upper()
    except UnicodeDecodeError:
        raise SscReadError("ssc_bad_number", f"{number_spec.where} is not text") from None
    if not is_valid_id_number(number):
        raise SscReadError(
            "ssc_bad_number",
            f"{number_spec.where} is not an 18-character ID number with a valid check character",
        )
    name: str | None = None
    try:
        name = decode_an(_read(transmit, name_spec)).strip() or None
    except SscReadError as exc:
        logger.warning("%s: identifying without the name (%s)", exc, exc.reason)
    except UnicodeDecodeError:
        logger.warning(
            "%s (%s) is not GB18030 text: identifying without it", name_spec.where, name_spec.label
        )
    return identifier.identify(number, name)
