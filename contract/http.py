"""Bodies of the local HTTP API: the pull API (§5) and the follow-up steps of a bad review (§11)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

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


class _StepRequest(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who took a follow-up step, and an optional note (read with `contract.validation.convert`)."""

    by: Annotated[str, Meta(min_length=1, max_length=64)]
    note: Annotated[str, Meta(max_length=500)] | None = None


class CallbackRequest(_StepRequest, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/alerts/{id}/callback`: the citizen was called back (回访)."""

    outcome: Literal["reached", "unreachable"]


class RectifyRequest(_StepRequest, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/alerts/{id}/rectify`: whether the complaint held, and if so that it was put right (整改)."""

    substantiated: bool


__all__ = [
    "PULL_LIMIT_DEFAULT",
    "PULL_LIMIT_MAX",
    "CallbackRequest",
    "RectifyRequest",
    "ack_answer",
    "pull_page",
]
