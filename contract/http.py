"""Bodies of the local pull API (CONTRACTS §5): a page of records and the answer to an ack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

PULL_LIMIT_MAX: Final = 5000
PULL_LIMIT_DEFAULT: Final = 500


def pull_page(record_bodies: Sequence[str], next_after: int, more: bool) -> str:
    """`{"records": [...], "next_after": SEQ, "more": bool}` from records stored as JSON text.

    The stored text of each record is put in as it is: decoding and encoding it again per pull was
    most of a page's cost, and it is already the §1 record the hub committed.
    """
    records = ",".join(record_bodies)
    return f'{{"records":[{records}],"next_after":{int(next_after)},"more":{"true" if more else "false"}}}'


def ack_answer(acked: int, upto: int) -> dict[str, int]:
    """The answer to `POST /v1/records/ack`: how many records were pending up to `upto`."""
    return {"acked": acked, "upto": upto}


__all__ = ["PULL_LIMIT_DEFAULT", "PULL_LIMIT_MAX", "ack_answer", "pull_page"]
