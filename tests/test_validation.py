"""`contract.validation`: one refused value names every problem, for payloads, records and the config.

msgspec stops at the first problem; these pin what the field-by-field pass adds on top of it, on the
contract's own types: rules applied beside type errors, lists of structs walked into, tables of values
named entry by entry, and everything in the document's order.
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.mqtt import RatingPayload
from contract.records import new_record_id
from contract.validation import Invalid, convert
from contract.wire import Batch


def problems_of(obj: Any, type_: Any) -> list[tuple[str, str]]:
    with pytest.raises(Invalid) as caught:
        convert(obj, type_)
    return [(p.path, p.kind) for p in caught.value.problems]


def test_a_rule_is_applied_even_when_another_field_is_refused_for_its_type() -> None:
    """`ts` is checked in `__post_init__`, which msgspec never reaches once `level` is refused."""
    found = problems_of({"msg_id": "m1", "level": 9, "ts": "yesterday"}, RatingPayload)
    assert found == [("level", "bound"), ("ts", "rule")]


def test_each_record_of_a_list_is_named_by_its_index() -> None:
    good = {
        "id": new_record_id(),
        "seq": 1,
        "kind": "alert",
        "created_at": "2026-12-07T08:00:00.000Z",
        "data": {},
    }
    records = [{**good, "seq": 0}, good, {**good, "id": "not-a-uuid", "colour": "red"}]
    batch = {"node_id": "n1", "batch_id": "b1", "sent_at": "2026-12-07T08:00:00.000Z", "records": records}
    assert problems_of(batch, Batch) == [
        ("records[0].seq", "bound"),
        ("records[2].id", "rule"),
        ("records[2].colour", "unknown"),
    ]


def test_an_unknown_key_carries_the_keys_allowed_there() -> None:
    batch = {"node_id": "n1", "batch_id": "b1", "sent_at": "2026-12-07T08:00:00.000Z", "records": [], "x": 1}
    with pytest.raises(Invalid) as caught:
        convert(batch, Batch)
    unknown = [p for p in caught.value.problems if p.kind == "unknown"]
    assert [(p.path, p.allowed) for p in unknown] == [("x", ("node_id", "batch_id", "sent_at", "records"))]


def test_entries_of_a_list_of_values_are_named_and_the_good_ones_still_checked() -> None:
    reasons = ["slow", "", "x" * 40]
    assert problems_of({"msg_id": "m1", "level": 2, "reasons": reasons, "ts": "then"}, RatingPayload) == [
        ("reasons[1]", "length"),
        ("reasons[2]", "length"),
        ("ts", "rule"),
    ]


def test_a_window_with_a_final_newline_is_refused() -> None:
    """msgspec's `pattern` matches with `re.search`, where `$` also matches before a final newline."""
    assert problems_of({"msg_id": "m1", "level": 5, "window": "07\n"}, RatingPayload) == [("window", "rule")]
